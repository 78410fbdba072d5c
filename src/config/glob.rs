//! Model-name patterns: exact names or globs with `*` (any run) and `?` (one char).

/// A compiled model-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPattern {
    /// Matches one name exactly.
    Exact(String),
    /// Matches by glob.
    Glob(String),
}

impl ModelPattern {
    /// Compile a pattern: a glob when it contains `*` or `?`.
    pub fn new(pattern: &str) -> ModelPattern {
        if pattern.contains(['*', '?']) {
            ModelPattern::Glob(pattern.to_string())
        } else {
            ModelPattern::Exact(pattern.to_string())
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            ModelPattern::Exact(exact) => exact == name,
            ModelPattern::Glob(glob) => glob_match(glob.as_bytes(), name.as_bytes()),
        }
    }

    /// The exact name, for patterns that name one model.
    pub fn exact(&self) -> Option<&str> {
        match self {
            ModelPattern::Exact(exact) => Some(exact),
            ModelPattern::Glob(_) => None,
        }
    }
}

/// Iterative glob match with backtracking to the last `*` (linear in practice,
/// no recursion, so a hostile model name cannot blow the stack).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_glob() {
        assert!(ModelPattern::new("llama-3-8b").matches("llama-3-8b"));
        assert!(!ModelPattern::new("llama-3-8b").matches("llama-3-8b-instruct"));
        let g = ModelPattern::new("llama-*");
        assert!(g.matches("llama-3-8b"));
        assert!(g.matches("llama-"));
        assert!(!g.matches("mistral"));
        assert!(ModelPattern::new("*-instruct").matches("qwen-instruct"));
        assert!(ModelPattern::new("m?del").matches("model"));
        assert!(!ModelPattern::new("m?del").matches("mdel"));
        assert!(ModelPattern::new("a*b*c").matches("axxbyyc"));
        assert!(!ModelPattern::new("a*b*c").matches("axxbyy"));
        assert!(ModelPattern::new("*").matches(""));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let p = ModelPattern::new(&"a*".repeat(20));
        let name = "a".repeat(5000) + "b";
        assert!(p.matches(&name));
    }
}
