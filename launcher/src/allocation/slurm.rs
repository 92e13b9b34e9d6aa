//! Slurm node lists (`nid[001-004],login1`): expanding them (the client's parser, shared
//! with it) and writing host names back as one.

pub use dimstore::hostlist::{expand_slurm_nodelist, NodelistError, MAX_EXPANDED_HOSTS};

/// Writes host names as a compact Slurm host list that [`expand_slurm_nodelist`] expands back
/// to exactly the same names in the same order (duplicates included).
///
/// Neighbouring names with the same prefix and a numeric suffix share one bracket group;
/// consecutive numbers of the same width become ranges: `nid001 nid002 nid003 nid010 login1`
/// is `nid[001-003,010],login1`. The names must be host names (no `[`, `]`, `,` or
/// whitespace); an empty slice gives an empty string.
#[must_use]
pub fn compress_nodelist<S: AsRef<str>>(nodes: &[S]) -> String {
    let mut items: Vec<String> = Vec::new();
    let mut run: Option<Run<'_>> = None;
    for node in nodes {
        let name = node.as_ref();
        let (prefix, digits) =
            name.split_at(name.trim_end_matches(|c: char| c.is_ascii_digit()).len());
        let Some(value) = digits.parse::<u64>().ok().filter(|_| !digits.is_empty()) else {
            items.extend(run.take().map(Run::render));
            items.push(name.to_owned());
            continue;
        };
        match &mut run {
            Some(r) if r.prefix == prefix => r.push(digits, value),
            _ => {
                items.extend(run.take().map(Run::render));
                let first = Span {
                    lo_text: digits,
                    lo: value,
                    hi: value,
                };
                run = Some(Run {
                    prefix,
                    spans: vec![first],
                });
            }
        }
    }
    items.extend(run.map(Run::render));
    items.join(",")
}

/// Neighbouring names with one prefix, for [`compress_nodelist`].
struct Run<'a> {
    prefix: &'a str,
    spans: Vec<Span<'a>>,
}

/// Consecutive numbers written with the width of `lo_text`.
struct Span<'a> {
    lo_text: &'a str,
    lo: u64,
    hi: u64,
}

impl<'a> Run<'a> {
    /// Adds a number: extends the last span if it follows it and has its width.
    fn push(&mut self, digits: &'a str, value: u64) {
        match self.spans.last_mut() {
            Some(last)
                if last.hi.checked_add(1) == Some(value)
                    && format!("{value:0width$}", width = last.lo_text.len()) == digits =>
            {
                last.hi = value;
            }
            _ => self.spans.push(Span {
                lo_text: digits,
                lo: value,
                hi: value,
            }),
        }
    }

    /// `prefix[lo-hi,n,...]`, or the plain name for a single number.
    fn render(self) -> String {
        if let [span] = self.spans.as_slice() {
            if span.lo == span.hi {
                return format!("{}{}", self.prefix, span.lo_text);
            }
        }
        let spans: Vec<String> = self
            .spans
            .iter()
            .map(|span| {
                let width = span.lo_text.len();
                if span.lo == span.hi {
                    span.lo_text.to_owned()
                } else {
                    format!("{}-{:0width$}", span.lo_text, span.hi)
                }
            })
            .collect();
        format!("{}[{}]", self.prefix, spans.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dimstore::hostlist::is_host_char;
    use proptest::prelude::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn compresses_like_slurm() {
        let nodes = strs(&["nid001", "nid002", "nid003", "nid010", "login1"]);
        assert_eq!(compress_nodelist(&nodes), "nid[001-003,010],login1");
        assert_eq!(compress_nodelist(&strs(&["n9", "n10", "n11"])), "n[9-11]");
        assert_eq!(compress_nodelist(&strs(&["n09", "n10"])), "n[09-10]");
        assert_eq!(compress_nodelist(&strs(&["n1"])), "n1");
        assert_eq!(compress_nodelist(&strs(&["hub", "n2", "n1"])), "hub,n[2,1]");
        assert_eq!(compress_nodelist::<String>(&[]), "");
    }

    /// Host names as a job might list them: runs of consecutive numbers after a prefix,
    /// mostly of one zero-padded width but sometimes not, mixed with plain names; numbers
    /// near 9/10 and 99/100 boundaries and near `u64::MAX` are likely.
    fn host_names() -> impl Strategy<Value = Vec<String>> {
        let prefix = prop::sample::select(vec!["n", "nid", "x3006c0s", "a1b", "r1-", ""]);
        let start = prop_oneof![0u64..12, 95u64..101, 0u64..5_000, Just(u64::MAX - 3)];
        let widths = prop::collection::vec(0usize..12, 6);
        let run = (prefix, start, 1usize..7, 0usize..5, widths).prop_map(
            |(prefix, start, len, width, widths)| {
                (0..len as u64)
                    .map_while(|i| start.checked_add(i))
                    .zip(widths)
                    .map(|(n, w)| {
                        let width = if w < 5 { w } else { width };
                        format!("{prefix}{n:0width$}")
                    })
                    .collect::<Vec<_>>()
            },
        );
        let plain = prop::sample::select(vec!["login", "hub", "n", "x-y.z"])
            .prop_map(|name| vec![name.to_owned()]);
        prop::collection::vec(prop_oneof![4 => run, 1 => plain], 1..10)
            .prop_map(|runs| runs.concat())
    }

    proptest! {
        #[test]
        fn compress_then_expand_is_identity(names in host_names()) {
            let list = compress_nodelist(&names);
            prop_assert_eq!(expand_slurm_nodelist(&list).unwrap(), names, "{}", list);
        }

        #[test]
        fn a_sorted_set_with_one_prefix_is_one_item(
            numbers in prop::collection::btree_set(0u64..5_000, 1..80),
            width in 1usize..6,
        ) {
            let names: Vec<String> = numbers.iter().map(|n| format!("nid{n:0width$}")).collect();
            let list = compress_nodelist(&names);
            prop_assert!(list.matches('[').count() <= 1, "{}", list);
            prop_assert!(!list.contains("],") && !list.starts_with(','), "{}", list);
            prop_assert_eq!(expand_slurm_nodelist(&list).unwrap(), names);
        }

        #[test]
        fn expand_never_panics(s in "[a-c0-9\\[\\],\\- ]{0,24}") {
            if let Ok(names) = expand_slurm_nodelist(&s) {
                prop_assert!(!names.is_empty());
                prop_assert!(names.iter().all(|n| !n.is_empty() && n.chars().all(is_host_char)));
            }
        }
    }
}
