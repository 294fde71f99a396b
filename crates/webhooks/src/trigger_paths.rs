//! A stack's trigger paths: globs of repository paths outside its project root whose
//! changes concern it too (a shared module, a variables file). `*` and `?` stay within one
//! path segment, `**` as a whole segment spans any number of them.

/// The longest pattern accepted, and the most a stack may have.
pub const MAX_PATTERN_LENGTH: usize = 256;
pub const MAX_PATTERNS: usize = 20;

/// Why a pattern is refused, for the person who wrote it.
pub fn validate(pattern: &str) -> Result<(), String> {
    let trimmed = pattern.trim();
    if trimmed.is_empty() {
        return Err("a trigger path is empty: expected a repository path or glob such as modules/** or shared/*.tf".to_owned());
    }
    if trimmed.len() > MAX_PATTERN_LENGTH {
        return Err(format!(
            "trigger path {:?}… is {} bytes long: at most {MAX_PATTERN_LENGTH} are allowed",
            trimmed.chars().take(32).collect::<String>(),
            trimmed.len()
        ));
    }
    if trimmed.starts_with('/') || trimmed.split('/').any(|segment| segment == "..") {
        return Err(format!(
            "trigger path {trimmed:?} leaves the repository: expected a path relative to its root, without .."
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(format!("trigger path {trimmed:?} holds a control character"));
    }
    Ok(())
}

/// Whether the repository path `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = segments(pattern).collect();
    let path: Vec<&str> = segments(path).collect();
    matches_segments(&pattern, &path)
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.trim().split('/').filter(|segment| !segment.is_empty() && *segment != ".")
}

/// Segment by segment; `**` tries every number of segments, without recursion so that a
/// pattern of many `**` cannot exhaust the stack (positions are memoized instead).
fn matches_segments(pattern: &[&str], path: &[&str]) -> bool {
    // reachable[j]: the pattern so far can have consumed exactly j path segments.
    let mut reachable = vec![false; path.len() + 1];
    reachable[0] = true;
    for segment in pattern {
        let mut next = vec![false; path.len() + 1];
        if *segment == "**" {
            let mut any = false;
            for (j, reached) in reachable.iter().enumerate() {
                any |= *reached;
                next[j] = any;
            }
        } else {
            for j in 0..path.len() {
                if reachable[j] && matches_segment(segment.as_bytes(), path[j].as_bytes()) {
                    next[j + 1] = true;
                }
            }
        }
        reachable = next;
    }
    reachable[path.len()]
}

/// `*` and `?` within one segment, by the classic two-pointer walk with one backtrack point.
fn matches_segment(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_stay_in_their_segment_and_double_stars_span_segments() {
        let cases = [
            ("modules/**", "modules/network/main.tf", true),
            ("modules/**", "modules", true),
            ("modules/**", "modulesx/a.tf", false),
            ("shared/*.tf", "shared/vars.tf", true),
            ("shared/*.tf", "shared/deep/vars.tf", false),
            ("**/*.tfvars", "env/prod/main.tfvars", true),
            ("**/*.tfvars", "main.tfvars", true),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/x/y/c", false),
            ("file?.tf", "file1.tf", true),
            ("file?.tf", "file10.tf", false),
            ("./versions.tf", "versions.tf", true),
            ("*", "", false),
            ("**", "anything/at/all", true),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(matches(pattern, path), expected, "{pattern} ~ {path}");
        }
    }

    #[test]
    fn many_stars_match_in_bounded_time() {
        let pattern = format!("{}x", "*".repeat(100));
        assert!(!matches(&pattern, &"a".repeat(200)));
        let pattern = vec!["**"; 100].join("/");
        assert!(matches(&pattern, &vec!["a"; 100].join("/")));
    }

    #[test]
    fn patterns_leaving_the_repository_or_empty_are_refused() {
        for refused in ["", "  ", "/etc/*", "../other/**", "a/../../b", "a\nb"] {
            assert!(validate(refused).is_err(), "{refused:?}");
        }
        assert!(validate(&"a".repeat(MAX_PATTERN_LENGTH + 1)).unwrap_err().contains("at most 256"));
        assert!(validate("modules/**").is_ok());
    }
}
