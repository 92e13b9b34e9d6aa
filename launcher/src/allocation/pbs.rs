//! PBS node files (`$PBS_NODEFILE`).

use std::collections::HashSet;

/// Reads a PBS node file (`$PBS_NODEFILE`): one host name per line, repeated once per MPI
/// rank placed there. Returns each host once, in order of first appearance. Blank lines and
/// `#` comments are ignored; anything after the host name on a line is ignored.
#[must_use]
pub fn read_pbs_nodefile(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|host| !host.starts_with('#'))
        .filter(|host| seen.insert(*host))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pbs_nodefile_collapses_ranks() {
        let text = "n2\nn2\n\n# comment\nn1\r\nn2\n  n3  \nn1\n";
        assert_eq!(read_pbs_nodefile(text), strs(&["n2", "n1", "n3"]));
        assert!(read_pbs_nodefile("").is_empty());
    }

    proptest! {
        #[test]
        fn pbs_collapsing_is_idempotent(
            hosts in prop::collection::vec(prop::sample::select(vec!["n1", "n2", "n3", "x10"]), 0..40),
            comments in prop::collection::vec(any::<bool>(), 0..40),
        ) {
            let text: String = hosts.iter().zip(comments.iter().chain(std::iter::repeat(&false)))
                .map(|(h, c)| if *c { format!("# {h}\n\n") } else { format!("{h}\n") })
                .collect();
            let once = read_pbs_nodefile(&text);
            let twice = read_pbs_nodefile(&once.join("\n"));
            prop_assert_eq!(&twice, &once);
            let unique: HashSet<&String> = once.iter().collect();
            prop_assert_eq!(unique.len(), once.len());
        }
    }
}
