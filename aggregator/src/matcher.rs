//! Label matchers with Alertmanager's meaning: `name=value`, `name!=value`, `name=~re`,
//! `name!~re` (regexes anchored; a missing label is the empty value). Silences, routes and
//! inhibition rules all match with them.

use serde::{Deserialize, Serialize};
use vigil_wire::Labels;

/// The most memory one compiled regex may take.
const REGEX_BYTES: usize = 1 << 20;

/// One matcher: `name=value`, `name!=value`, `name=~re`, `name!~re` (regexes anchored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    #[serde(rename = "isRegex")]
    pub is_regex: bool,
    #[serde(rename = "isEqual", default = "yes")]
    pub is_equal: bool,
    /// The regex, compiled once (at the first match after a post or a load).
    #[serde(skip)]
    compiled: Compiled,
}

/// A compiled regex kept beside its matcher; not part of its identity.
#[derive(Debug, Clone, Default)]
struct Compiled(std::sync::OnceLock<Option<regex::Regex>>);

impl PartialEq for Compiled {
    fn eq(&self, _: &Compiled) -> bool {
        true
    }
}

impl Eq for Compiled {}

fn yes() -> bool {
    true
}

impl Matcher {
    pub(crate) fn regex(&self) -> Result<regex::Regex, String> {
        regex::RegexBuilder::new(&format!("^(?:{})$", self.value))
            .size_limit(REGEX_BYTES)
            .build()
            .map_err(|e| format!("matcher {}: invalid regular expression: {e}", self.name))
    }

    /// The compiled regex (None: not a regex, or one that does not compile: matches nothing).
    pub(crate) fn compiled(&self) -> Option<&regex::Regex> {
        self.compiled
            .0
            .get_or_init(|| self.is_regex.then(|| self.regex().ok()).flatten())
            .as_ref()
    }

    /// Whether `value` (empty when the label is missing) satisfies this matcher.
    pub(crate) fn matches_value(&self, re: Option<&regex::Regex>, value: &str) -> bool {
        let hit = match re {
            Some(re) => re.is_match(value),
            None => self.value == value,
        };
        hit == self.is_equal
    }

    pub(crate) fn op(&self) -> &'static str {
        match (self.is_equal, self.is_regex) {
            (true, false) => "=",
            (false, false) => "!=",
            (true, true) => "=~",
            (false, true) => "!~",
        }
    }
}

/// Parses an API filter matcher as amtool sends it: `name="value"`, `name!~"re"` (quotes
/// optional).
pub fn parse_filter(text: &str) -> Result<Matcher, String> {
    let t = text
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim();
    let at = t
        .find(['=', '!'])
        .ok_or_else(|| format!("bad matcher {text:?}: want name=\"value\""))?;
    let name = t[..at].trim().to_string();
    let rest = &t[at..];
    let (is_equal, is_regex, value) = if let Some(v) = rest.strip_prefix("=~") {
        (true, true, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (false, true, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (false, false, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (true, false, v)
    } else {
        return Err(format!("bad matcher {text:?}: want name=\"value\""));
    };
    let v = value.trim();
    let value = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        serde_json::from_str::<String>(v).map_err(|e| format!("bad matcher {text:?}: {e}"))?
    } else {
        v.to_string()
    };
    if name.is_empty() {
        return Err(format!("bad matcher {text:?}: no label name"));
    }
    let m = Matcher {
        name,
        value,
        is_regex,
        is_equal,
        compiled: Compiled::default(),
    };
    if m.is_regex {
        m.regex()?;
    }
    Ok(m)
}

/// Whether every matcher of `ms` matches `labels` (a missing label is the empty value; a regex
/// that does not compile matches nothing).
pub fn matches_all(ms: &[Matcher], labels: &Labels) -> bool {
    ms.iter().all(|m| {
        let re = m.compiled();
        if m.is_regex && re.is_none() {
            return false;
        }
        m.matches_value(re, labels.get(&m.name).unwrap_or(""))
    })
}
