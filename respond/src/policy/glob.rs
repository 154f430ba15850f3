//! Shell-style globs for policy matchers: `*` matches any run of characters (`/`
//! included: `shop/*` matches `shop/web@sha256:…`), `?` one character, anything else
//! itself. No character classes: a group key or a label value needs nothing more, and a
//! smaller language is easier to review in a policy file.

/// Whether `text` matches `pattern` as a whole. Linear in the product of the lengths at
/// worst (the classic two-pointer algorithm with one backtrack point; no recursion, so
/// a hostile pattern or text cannot blow the stack).
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || (p[i] != '*' && p[i] == t[j])) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("*", ""));
        assert!(matches("shop/*", "shop/web@sha256:ab"));
        assert!(!matches("shop/*", "shopping/web"));
        assert!(matches("*web*", "shop/web:1.4"));
        assert!(matches("web-?", "web-1"));
        assert!(!matches("web-?", "web-12"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }

    proptest::proptest! {
        #[test]
        fn star_matches_everything_and_literal_itself(s in "[a-z/:@.-]{0,40}") {
            proptest::prop_assert!(matches("*", &s));
            let escaped_free = !s.contains('*') && !s.contains('?');
            if escaped_free {
                proptest::prop_assert!(matches(&s, &s));
            }
        }
    }
}
