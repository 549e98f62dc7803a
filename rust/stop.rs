//! Stop strings over a stream of text, holding back what could still become one.
//!
//! The checker keeps only the text not yet shown (`held`): the longest suffix of the
//! output that is a proper prefix of some stop string. Any stop string that completes in
//! newly decoded text must start inside `held + new` (an earlier start would make a longer
//! suffix a prefix of it), so each step searches a few bytes, never the whole output.
//!
//! The first stop string to *complete* wins (ties: the one that starts first, i.e. the
//! longer), which does not depend on how the text was cut into tokens.

/// Per-request stop-string state.
#[derive(Clone, Debug, Default)]
pub struct StopChecker {
    stops: Vec<String>,
    include_in_output: bool,
    held: String,
}

impl StopChecker {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new(stops: Vec<String>, include_in_output: bool) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            include_in_output,
            held: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop string at `index` (as returned by `feed`).
    pub fn stop_string(&self, index: usize) -> &str {
        &self.stops[index]
    }

    /// Take in newly decoded text; append to `out` what can be shown now. Returns the
    /// index of the stop string that matched; matches are only looked for when `check`
    /// (false before `min_tokens`), and only ones that end in `new_text`.
    pub fn feed(&mut self, new_text: &str, check: bool, out: &mut String) -> Option<usize> {
        if self.stops.is_empty() {
            out.push_str(new_text);
            return None;
        }
        let boundary = self.held.len();
        self.held.push_str(new_text);
        if check && !new_text.is_empty() {
            if let Some((index, start, end)) = first_completed(&self.held, boundary, &self.stops) {
                let cut = if self.include_in_output { end } else { start };
                out.push_str(&self.held[..cut]);
                self.held.clear();
                return Some(index);
            }
        }
        let keep = longest_partial_suffix(&self.held, &self.stops);
        let emit = self.held.len() - keep;
        out.push_str(&self.held[..emit]);
        self.held.drain(..emit);
        None
    }

    /// Show whatever was held back (the request ended for another reason).
    pub fn flush(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }
}

/// The stop string that completes first in `text`, among matches ending after
/// `boundary`: `(index, start, end)`.
fn first_completed(text: &str, boundary: usize, stops: &[String]) -> Option<(usize, usize, usize)> {
    let mut best: Option<(usize, usize, usize)> = None;
    for (index, stop) in stops.iter().enumerate() {
        let mut from = (boundary + 1).saturating_sub(stop.len());
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let found = find_from(text, stop, from, boundary);
        if let Some((start, end)) = found {
            let better = match best {
                None => true,
                Some((_, best_start, best_end)) => (end, start) < (best_end, best_start),
            };
            if better {
                best = Some((index, start, end));
            }
        }
    }
    best
}

/// The first occurrence of `stop` in `text` at or after `from` that ends after
/// `boundary`, as `(start, end)`. The haystack is a few bytes, so a plain scan beats a
/// substring searcher's setup.
fn find_from(text: &str, stop: &str, from: usize, boundary: usize) -> Option<(usize, usize)> {
    let (haystack, needle) = (text.as_bytes(), stop.as_bytes());
    let first = needle[0];
    let last_start = haystack.len().checked_sub(needle.len())?;
    (from..=last_start)
        .filter(|&start| haystack[start] == first && haystack[start..].starts_with(needle))
        .map(|start| (start, start + needle.len()))
        .find(|&(_, end)| end > boundary)
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string.
fn longest_partial_suffix(text: &str, stops: &[String]) -> usize {
    let Some(&last) = text.as_bytes().last() else {
        return 0;
    };
    let mut keep = 0;
    for stop in stops {
        let stop = stop.as_bytes();
        let longest = (stop.len() - 1).min(text.len());
        for len in (keep + 1..=longest).rev() {
            // Valid UTF-8 `text` can only end with whole characters of `stop`: bytes suffice.
            if stop[len - 1] == last && text.as_bytes().ends_with(&stop[..len]) {
                keep = len;
                break;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` one by one; return (shown pieces, stop index).
    fn run(stops: &[&str], include: bool, pieces: &[&str]) -> (Vec<String>, Option<usize>) {
        let mut checker = StopChecker::new(stops.iter().map(|s| s.to_string()).collect(), include);
        let mut shown = Vec::new();
        for piece in pieces {
            let mut out = String::new();
            let stop = checker.feed(piece, true, &mut out);
            shown.push(out);
            if stop.is_some() {
                return (shown, stop);
            }
        }
        let mut out = String::new();
        checker.flush(&mut out);
        shown.push(out);
        (shown, None)
    }

    #[test]
    fn holds_back_a_possible_stop_and_releases_it() {
        let (shown, stop) = run(&["STOP"], false, &["a S", "T", "x"]);
        assert_eq!(shown, ["a ", "", "STx", ""]);
        assert_eq!(stop, None);
    }

    #[test]
    fn stop_split_across_three_pieces() {
        let (shown, stop) = run(&["STOP"], false, &["a S", "TO", "P and more"]);
        assert_eq!(shown, ["a ", "", ""]);
        assert_eq!(stop, Some(0));
        let (shown, _) = run(&["STOP"], true, &["a S", "TO", "P and more"]);
        assert_eq!(shown.concat(), "a STOP");
    }

    #[test]
    fn the_first_to_complete_wins_whatever_the_cut() {
        let text = "xxabcdyy";
        for cut in 0..text.len() {
            let (shown, stop) = run(&["abcd", "bc"], false, &[&text[..cut], &text[cut..]]);
            assert_eq!(stop, Some(1), "cut at {cut}");
            assert_eq!(shown.concat(), "xxa");
        }
        // Same end: the longer (earlier start) wins.
        let (shown, stop) = run(&["c", "abc"], false, &["xabcx"]);
        assert_eq!((shown.concat(), stop), ("x".to_string(), Some(1)));
    }

    #[test]
    fn multibyte_stops_and_text() {
        let (shown, stop) = run(&["终了"], false, &["你好", "终", "止", "终了吗"]);
        assert_eq!(shown, ["你好", "", "终止", ""]);
        assert_eq!(stop, Some(0));
    }

    #[test]
    fn no_match_before_check_and_straddling_match_after() {
        let mut checker = StopChecker::new(vec!["ab".into(), "xyz".into()], false);
        let mut out = String::new();
        assert_eq!(checker.feed("ab x", false, &mut out), None);
        assert_eq!(out, "ab ");
        assert_eq!(checker.feed("yz", true, &mut out), Some(1));
        assert_eq!(out, "ab ");
    }

    #[test]
    fn empty_stops_are_ignored() {
        let (shown, stop) = run(&[""], false, &["abc"]);
        assert_eq!((shown.concat(), stop), ("abc".to_string(), None));
    }
}
