//! Slurm host lists (`nid[001-004,010],login1`): expanded into host names for the launcher's
//! allocations and for the hosts a client trusts (`DIMSTORE_TRUSTED_HOSTS`).

/// The most host names a node list may expand to; larger lists are rejected as malformed.
pub const MAX_EXPANDED_HOSTS: usize = 1 << 20;

/// Why a Slurm node list (`nid[001-004,010],login1`) could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodelistError {
    /// The list is empty or only whitespace.
    #[error("empty node list")]
    Empty,
    /// A comma-separated item is empty (`n1,,n2`, a leading or trailing comma).
    #[error("empty host name at byte {position}")]
    EmptyItem {
        /// Byte offset of the empty item in the list.
        position: usize,
    },
    /// A `[` without its `]`, or a `]` without its `[`.
    #[error("unbalanced bracket at byte {position}")]
    UnbalancedBracket {
        /// Byte offset of the offending bracket.
        position: usize,
    },
    /// A `[` inside a bracket group.
    #[error("nested bracket at byte {position}")]
    NestedBracket {
        /// Byte offset of the inner `[`.
        position: usize,
    },
    /// A character that cannot appear in a host name.
    #[error("invalid character {ch:?} at byte {position}")]
    InvalidCharacter {
        /// The character.
        ch: char,
        /// Its byte offset in the list.
        position: usize,
    },
    /// A bracket group holds something other than numbers and ascending `lo-hi` ranges.
    #[error("invalid range {range:?} at byte {position}: {reason}")]
    InvalidRange {
        /// The offending part of the bracket group.
        range: String,
        /// Byte offset of the bracket group's contents.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The list expands to more than [`MAX_EXPANDED_HOSTS`] names.
    #[error("node list expands to more than {limit} host names")]
    TooLarge {
        /// The limit ([`MAX_EXPANDED_HOSTS`]).
        limit: usize,
    },
}

/// Expands a Slurm host list into host names, in the order written.
///
/// Items are separated by commas outside brackets; each item is a host name with any number
/// of bracket groups, each a comma-separated list of numbers and `lo-hi` ranges. Zero padding
/// follows the width of the range's low end, as in Slurm: `nid[008-010]` is `nid008 nid009
/// nid010`, `n[9-10]` is `n9 n10`. Several groups multiply, the first varying slowest:
/// `a[1-2]b[3-4]` is `a1b3 a1b4 a2b3 a2b4`. Surrounding whitespace is ignored.
///
/// ```text
/// nid[001-004,010]  ->  nid001 nid002 nid003 nid004 nid010
/// n[1-3],login1     ->  n1 n2 n3 login1
/// ```
///
/// # Errors
/// A [`NodelistError`] for an empty list or item, unbalanced or nested brackets, characters
/// that cannot be in a host name, malformed or descending ranges, numbers beyond `u64`, and
/// lists of more than [`MAX_EXPANDED_HOSTS`] names.
pub fn expand_slurm_nodelist(s: &str) -> Result<Vec<String>, NodelistError> {
    let offset = s.len() - s.trim_start().len();
    let list = s.trim();
    if list.is_empty() {
        return Err(NodelistError::Empty);
    }
    let mut out = Vec::new();
    for (start, item) in split_items(list, offset)? {
        expand_item(item, start, &mut out)?;
    }
    Ok(out)
}

/// Splits a list at the commas outside brackets: (byte offset, item) pairs.
fn split_items(list: &str, offset: usize) -> Result<Vec<(usize, &str)>, NodelistError> {
    let mut items = Vec::new();
    let mut open: Option<usize> = None;
    let mut start = 0;
    for (i, ch) in list.char_indices() {
        match (ch, open) {
            ('[', None) => open = Some(i),
            ('[', Some(_)) => {
                return Err(NodelistError::NestedBracket {
                    position: offset + i,
                })
            }
            (']', Some(_)) => open = None,
            (']', None) => {
                return Err(NodelistError::UnbalancedBracket {
                    position: offset + i,
                })
            }
            (',', None) => {
                items.push((offset + start, &list[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if let Some(i) = open {
        return Err(NodelistError::UnbalancedBracket {
            position: offset + i,
        });
    }
    items.push((offset + start, &list[start..]));
    match items.iter().find(|(_, item)| item.is_empty()) {
        Some(&(position, _)) => Err(NodelistError::EmptyItem { position }),
        None => Ok(items),
    }
}

/// One piece of a host list item.
enum Segment<'a> {
    /// Text copied into every name.
    Literal(&'a str),
    /// A bracket group: names get one number from each range in turn.
    Ranges(Vec<NumRange>),
}

/// `lo..=hi`, zero-padded to `width` digits.
#[derive(Debug, Clone, Copy)]
struct NumRange {
    lo: u64,
    hi: u64,
    width: usize,
}

impl NumRange {
    /// How many numbers; `None` for the whole `u64` range.
    fn len(&self) -> Option<u64> {
        (self.hi - self.lo).checked_add(1)
    }
}

/// Expands one item (brackets balanced and not nested, checked by [`split_items`]).
fn expand_item(item: &str, base: usize, out: &mut Vec<String>) -> Result<(), NodelistError> {
    let mut segments = Vec::new();
    let mut rest = item;
    let mut pos = base;
    while !rest.is_empty() {
        let (literal, after) = rest.split_at(rest.find('[').unwrap_or(rest.len()));
        if let Some((i, ch)) = literal.char_indices().find(|&(_, ch)| !is_host_char(ch)) {
            return Err(NodelistError::InvalidCharacter {
                ch,
                position: pos + i,
            });
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        pos += literal.len();
        if after.is_empty() {
            break;
        }
        let close = after
            .find(']')
            .ok_or(NodelistError::UnbalancedBracket { position: pos })?;
        segments.push(Segment::Ranges(parse_ranges(&after[1..close], pos + 1)?));
        pos += close + 1;
        rest = &after[close + 1..];
    }

    let mut count: u64 = 1;
    for segment in &segments {
        if let Segment::Ranges(ranges) = segment {
            let group = ranges
                .iter()
                .try_fold(0u64, |acc, r| acc.checked_add(r.len()?));
            count = group.and_then(|g| count.checked_mul(g)).unwrap_or(u64::MAX);
        }
    }
    let total = (out.len() as u64).saturating_add(count);
    if total > MAX_EXPANDED_HOSTS as u64 {
        return Err(NodelistError::TooLarge {
            limit: MAX_EXPANDED_HOSTS,
        });
    }

    let mut names = vec![String::new()];
    for segment in &segments {
        match segment {
            Segment::Literal(text) => names.iter_mut().for_each(|name| name.push_str(text)),
            Segment::Ranges(ranges) => {
                let mut next = Vec::with_capacity(names.len());
                for name in &names {
                    for r in ranges {
                        for n in r.lo..=r.hi {
                            next.push(format!("{name}{n:0width$}", width = r.width));
                        }
                    }
                }
                names = next;
            }
        }
    }
    out.extend(names);
    Ok(())
}

/// Parses the inside of a bracket group: `001-004,010`.
fn parse_ranges(text: &str, position: usize) -> Result<Vec<NumRange>, NodelistError> {
    let invalid = |range: &str, reason| NodelistError::InvalidRange {
        range: range.to_owned(),
        position,
        reason,
    };
    if text.is_empty() {
        return Err(invalid(text, "empty brackets"));
    }
    let number = |part: &str, digits: &str| -> Result<u64, NodelistError> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(part, "expected a number or lo-hi"));
        }
        digits
            .parse()
            .map_err(|_| invalid(part, "number too large"))
    };
    text.split(',')
        .map(|part| {
            let (lo_text, hi_text) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi) = (number(part, lo_text)?, number(part, hi_text)?);
            if lo > hi {
                return Err(invalid(part, "descending range"));
            }
            Ok(NumRange {
                lo,
                hi,
                width: lo_text.len(),
            })
        })
        .collect()
}

/// Characters of a host name (RFC 1123 plus `_` and `.`).
pub fn is_host_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(s: &str) -> Vec<String> {
        expand_slurm_nodelist(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn expands_ranges_singletons_and_padding() {
        assert_eq!(
            expand("nid[001-004,010]"),
            strs(&["nid001", "nid002", "nid003", "nid004", "nid010"])
        );
        assert_eq!(expand("n[1-3],login1"), strs(&["n1", "n2", "n3", "login1"]));
        assert_eq!(expand("n[08-11]"), strs(&["n08", "n09", "n10", "n11"]));
        assert_eq!(expand("n[8-11]"), strs(&["n8", "n9", "n10", "n11"]));
        assert_eq!(expand("n[098-100]"), strs(&["n098", "n099", "n100"]));
        assert_eq!(expand("n1"), strs(&["n1"]));
        assert_eq!(expand("[1-2]"), strs(&["1", "2"]));
        assert_eq!(expand("n[5]"), strs(&["n5"]));
        assert_eq!(expand(" n[1-2]\n"), strs(&["n1", "n2"]));
        assert_eq!(
            expand("x3006c0s[13,19]b0n0.hsn.cm.polaris.alcf.anl.gov"),
            strs(&[
                "x3006c0s13b0n0.hsn.cm.polaris.alcf.anl.gov",
                "x3006c0s19b0n0.hsn.cm.polaris.alcf.anl.gov"
            ])
        );
    }

    #[test]
    fn expands_several_bracket_groups_first_slowest() {
        assert_eq!(
            expand("a[1-2]b[3-4]"),
            strs(&["a1b3", "a1b4", "a2b3", "a2b4"])
        );
        assert_eq!(expand("r[1-2]n[1],c"), strs(&["r1n1", "r2n1", "c"]));
    }

    #[test]
    fn rejects_malformed_lists() {
        use NodelistError as E;
        let err = |s: &str| expand_slurm_nodelist(s).expect_err(s);
        assert_eq!(err(""), E::Empty);
        assert_eq!(err("  "), E::Empty);
        assert_eq!(err("n1,,n2"), E::EmptyItem { position: 3 });
        assert_eq!(err(",n1"), E::EmptyItem { position: 0 });
        assert_eq!(err("n1,"), E::EmptyItem { position: 3 });
        assert_eq!(err("n[1-2"), E::UnbalancedBracket { position: 1 });
        assert_eq!(err("n1]"), E::UnbalancedBracket { position: 2 });
        assert_eq!(err("n[1[2]]"), E::NestedBracket { position: 3 });
        assert_eq!(
            err("n 1"),
            E::InvalidCharacter {
                ch: ' ',
                position: 1
            }
        );
        assert_eq!(
            err("n[1]x/"),
            E::InvalidCharacter {
                ch: '/',
                position: 5
            }
        );
        for bad in [
            "n[]",
            "n[3-1]",
            "n[a-b]",
            "n[1-2-3]",
            "n[1,]",
            "n[-1]",
            "n[99999999999999999999]",
        ] {
            assert!(matches!(err(bad), E::InvalidRange { .. }), "{bad}");
        }
        assert_eq!(
            err("n[0-9999999]"),
            E::TooLarge {
                limit: MAX_EXPANDED_HOSTS
            }
        );
        assert_eq!(
            err("a[0-99999]b[0-99999]"),
            E::TooLarge {
                limit: MAX_EXPANDED_HOSTS
            }
        );
        assert_eq!(
            err("a[0-18446744073709551615]"),
            E::TooLarge {
                limit: MAX_EXPANDED_HOSTS
            }
        );
    }
}
