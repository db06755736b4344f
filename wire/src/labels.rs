//! Label sets: sorted by name, unique names, no empty values, held in one shared allocation.
//!
//! A fleet's aggregator holds hundreds of thousands of label sets and reads them on every query,
//! so the representation is what Prometheus's `stringlabels` taught: all names and values of a set
//! in one contiguous string, each preceded by its length. Cloning is one reference count, reading
//! a label touches one cache line or two, and a set costs its text plus a few bytes.
//!
//! Lengths are written in an ASCII-only variable-length code (6 bits a byte, bytes `0x40..0x7f`
//! say "more follows") so the whole buffer stays a valid `str` and can be sliced without unsafe
//! code or re-validation.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The label that carries a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label pair, borrowed from a [`Labels`] or a builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// An immutable label set. Ordering compares label pairs lexicographically, as Prometheus's
/// `labels.Compare` does.
#[derive(Clone, Default)]
pub struct Labels(Option<Arc<str>>);

fn put_len(buf: &mut String, mut n: usize) {
    // Most significant group first; every byte but the last has 0x40 set.
    let mut groups = [0u8; 11];
    let mut k = 0;
    loop {
        groups[k] = (n & 0x3f) as u8;
        k += 1;
        n >>= 6;
        if n == 0 {
            break;
        }
    }
    for i in (0..k).rev() {
        let b = if i == 0 { groups[i] } else { groups[i] | 0x40 };
        buf.push(b as char);
    }
}

fn get_len(b: &[u8], pos: &mut usize) -> usize {
    let mut n = 0usize;
    loop {
        let x = b[*pos];
        *pos += 1;
        n = (n << 6) | usize::from(x & 0x3f);
        if x & 0x40 == 0 {
            return n;
        }
    }
}

fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
    let mut buf = String::new();
    for (n, v) in pairs {
        put_len(&mut buf, n.len());
        buf.push_str(n);
        put_len(&mut buf, v.len());
        buf.push_str(v);
    }
    if buf.is_empty() {
        Labels(None)
    } else {
        Labels(Some(Arc::from(buf)))
    }
}

/// Iterates the labels of a set in name order.
#[derive(Clone)]
pub struct Iter<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Label<'a>;

    fn next(&mut self) -> Option<Label<'a>> {
        if self.pos >= self.s.len() {
            return None;
        }
        let b = self.s.as_bytes();
        let n = get_len(b, &mut self.pos);
        let name = &self.s[self.pos..self.pos + n];
        self.pos += n;
        let v = get_len(b, &mut self.pos);
        let value = &self.s[self.pos..self.pos + v];
        self.pos += v;
        Some(Label { name, value })
    }
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Labels(None)
    }

    /// Builds a label set from pairs in any order. Later duplicates of a name win; empty values
    /// are dropped.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut b = LabelsBuilder::new();
        for (n, v) in pairs {
            b.set(n.as_ref(), v.as_ref());
        }
        b.build()
    }

    fn text(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            s: self.text(),
            pos: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        for l in self.iter() {
            match l.name.cmp(name) {
                Ordering::Less => {}
                Ordering::Equal => return Some(l.value),
                Ordering::Greater => return None,
            }
        }
        None
    }

    /// The value of `name`, or "" when absent (Prometheus's convention).
    pub fn get_or_empty(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// The metric name, if any.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A copy without the metric name.
    pub fn without_metric_name(&self) -> Labels {
        if !self.has(METRIC_NAME) {
            return self.clone();
        }
        self.filter(|l| l.name != METRIC_NAME)
    }

    /// A copy keeping only the labels for which `keep` is true.
    pub fn filter(&self, mut keep: impl FnMut(&Label<'_>) -> bool) -> Labels {
        encode(self.iter().filter(|l| keep(l)).map(|l| (l.name, l.value)))
    }

    /// A copy keeping only the named labels.
    pub fn keep_only(&self, names: &[impl AsRef<str>]) -> Labels {
        self.filter(|l| names.iter().any(|n| n.as_ref() == l.name))
    }

    /// A copy dropping the named labels.
    pub fn drop_names(&self, names: &[impl AsRef<str>]) -> Labels {
        self.filter(|l| !names.iter().any(|n| n.as_ref() == l.name))
    }

    /// A builder starting from this set.
    pub fn to_builder(&self) -> LabelsBuilder {
        LabelsBuilder {
            labels: self
                .iter()
                .map(|l| (l.name.to_string(), l.value.to_string()))
                .collect(),
        }
    }

    /// The identity of this label set's shared allocation (0 for the empty set): equal for
    /// clones of one set. Only meaningful while a clone is kept alive (an allocation freed can
    /// be reused by another set).
    pub fn alloc_id(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |a| Arc::as_ptr(a) as *const u8 as usize)
    }

    /// A stable 64-bit hash of the label set (FNV-1a over names and values, with separators).
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for l in self.iter() {
            eat(l.name.as_bytes());
            eat(&[0xff]);
            eat(l.value.as_bytes());
            eat(&[0xfe]);
        }
        h
    }

    /// Bytes this set holds on the heap (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len() + 16)
    }
}

/// Encodes label pairs that must arrive sorted by name with no duplicates (as remote-write
/// requires) straight into `buf`, in the canonical form [`Labels`] holds — so a receiver can look
/// a series up by `buf` without building a label set. Empty values are skipped (an empty value
/// means "absent"). Errors name the first offending label.
pub fn encode_sorted<'a>(
    buf: &mut String,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    buf.clear();
    let mut prev: Option<&str> = None;
    for (n, v) in pairs {
        if let Some(p) = prev {
            if p >= n {
                return Err(format!("labels not sorted or duplicated at {n:?}"));
            }
        }
        prev = Some(n);
        if v.is_empty() {
            continue;
        }
        put_len(buf, n.len());
        buf.push_str(n);
        put_len(buf, v.len());
        buf.push_str(v);
    }
    Ok(())
}

impl Labels {
    /// The canonical encoded text (what [`encode_sorted`] writes).
    pub fn encoded(&self) -> &str {
        self.text()
    }

    /// [`Labels::from_encoded`] for text read back from a file, which may be damaged: `None`
    /// unless it is a well-formed encoding of names in order, each once, with non-empty values.
    pub fn from_encoded_checked(text: &str) -> Option<Labels> {
        let b = text.as_bytes();
        let mut pos = 0;
        let mut prev: Option<&str> = None;
        let field = |pos: &mut usize| -> Option<&str> {
            let mut n = 0usize;
            loop {
                let x = *b.get(*pos)?;
                *pos += 1;
                n = n.checked_mul(64)? | usize::from(x & 0x3f);
                if x & 0x40 == 0 {
                    break;
                }
            }
            let f = text.get(*pos..pos.checked_add(n)?)?;
            *pos += n;
            Some(f)
        };
        while pos < b.len() {
            let name = field(&mut pos)?;
            let value = field(&mut pos)?;
            if value.is_empty() || prev.is_some_and(|p| p >= name) {
                return None;
            }
            prev = Some(name);
        }
        // One encoding a set: a length written with leading zero groups would make a second
        // series of the same labels.
        let l = Labels::from_encoded(text);
        let mut canonical = String::with_capacity(text.len());
        encode_sorted(&mut canonical, l.iter().map(|x| (x.name, x.value))).ok()?;
        (canonical == text).then_some(l)
    }

    /// A label set from text [`encode_sorted`] produced.
    pub fn from_encoded(text: &str) -> Labels {
        if text.is_empty() {
            Labels(None)
        } else {
            Labels(Some(Arc::from(text)))
        }
    }
}

/// Label sets hash and compare as their encoded text, so maps keyed by `Labels` can be searched
/// with a `&str` from [`encode_sorted`].
impl std::borrow::Borrow<str> for Labels {
    fn borrow(&self) -> &str {
        self.text()
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        // The encoding is canonical, so equal sets have equal text.
        self.text() == other.text()
    }
}

impl Eq for Labels {}

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text().hash(state);
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Self) -> Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = Label<'a>;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Writes `{a="1", b="2"}` preceded by the metric name, as Prometheus prints series.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        if let Some(n) = name {
            f.write_str(n)?;
        }
        let mut rest = self.iter().filter(|l| l.name != METRIC_NAME).peekable();
        if rest.peek().is_none() && name.is_some() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, l) in rest.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{}=\"{}\"",
                l.name,
                crate::text::escape_label_value(l.value)
            )?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Mutable label set under construction.
#[derive(Debug, Clone, Default)]
pub struct LabelsBuilder {
    labels: Vec<(String, String)>,
}

impl LabelsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`; an empty value removes the label.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let (name, value) = (name.into(), value.into());
        match self.labels.binary_search_by(|l| l.0.cmp(&name)) {
            Ok(i) if value.is_empty() => {
                self.labels.remove(i);
            }
            Ok(i) => self.labels[i].1 = value,
            Err(_) if value.is_empty() => {}
            Err(i) => self.labels.insert(i, (name, value)),
        }
        self
    }

    pub fn del(&mut self, name: &str) -> &mut Self {
        if let Ok(i) = self.labels.binary_search_by(|l| l.0.as_str().cmp(name)) {
            self.labels.remove(i);
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|l| l.0.as_str().cmp(name))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }

    pub fn build(&self) -> Labels {
        encode(self.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_empty_values_dropped() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1"), ("c", ""), ("a", "3")]);
        let names: Vec<&str> = l.iter().map(|l| l.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(l.get("a"), Some("3"));
        assert_eq!(l.get("c"), None);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn checked_decoding_takes_real_sets_and_refuses_damaged_ones() {
        let long = "v".repeat(5_000);
        let l = Labels::from_pairs([("__name__", "up"), ("job", long.as_str()), ("ü", "é")]);
        let text = l.encoded();
        assert_eq!(Labels::from_encoded_checked(text), Some(l.clone()));
        assert_eq!(Labels::from_encoded_checked(""), Some(Labels::empty()));
        // Every cut and every byte changed: refused, or a set that reads without a panic.
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            if let Ok(t) = std::str::from_utf8(&bytes[..i]) {
                if let Some(l) = Labels::from_encoded_checked(t) {
                    let _ = l.iter().count();
                }
            }
            for bit in 0..7 {
                let mut b = bytes.to_vec();
                b[i] ^= 1 << bit;
                if let Ok(t) = std::str::from_utf8(&b) {
                    if let Some(l) = Labels::from_encoded_checked(t) {
                        let _ = (l.iter().count(), l.to_string());
                    }
                }
            }
        }
        let unsorted = format!(
            "{}{}",
            Labels::from_pairs([("b", "1")]).encoded(),
            Labels::from_pairs([("a", "1")]).encoded()
        );
        assert_eq!(Labels::from_encoded_checked(&unsorted), None);
    }

    #[test]
    fn long_and_unicode_values_round_trip() {
        let long = "x".repeat(70_000);
        let l = Labels::from_pairs([("a", long.as_str()), ("ü", "héllo"), ("z", "")]);
        assert_eq!(l.get("a"), Some(long.as_str()));
        assert_eq!(l.get("ü"), Some("héllo"));
        let lens: Vec<usize> = [0, 1, 63, 64, 4095, 4096, 1 << 20].to_vec();
        for n in lens {
            let v = "v".repeat(n);
            let l = Labels::from_pairs([("n", v.as_str())]);
            assert_eq!(
                l.get("n").map(str::len),
                if n == 0 { None } else { Some(n) }
            );
        }
    }

    #[test]
    fn display_matches_prometheus() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "a\"b")]);
        assert_eq!(l.to_string(), r#"up{job="a\"b"}"#);
        assert_eq!(Labels::from_pairs([("__name__", "up")]).to_string(), "up");
        assert_eq!(Labels::empty().to_string(), "{}");
    }

    #[test]
    fn fingerprint_separates_names_from_values() {
        let a = Labels::from_pairs([("ab", "c")]);
        let b = Labels::from_pairs([("a", "bc")]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a, b);
    }

    #[test]
    fn ordering_is_lexicographic_by_pairs() {
        let a = Labels::from_pairs([("a", "1")]);
        let b = Labels::from_pairs([("a", "1"), ("b", "1")]);
        let c = Labels::from_pairs([("a", "2")]);
        let d = Labels::from_pairs([("aa", "0")]);
        assert!(Labels::empty() < a && a < b && b < c && c < d);
    }

    #[test]
    fn encoded_form_matches_the_builder() {
        let mut buf = String::new();
        encode_sorted(&mut buf, [("__name__", "up"), ("a", ""), ("job", "x")]).unwrap();
        let l = Labels::from_pairs([("__name__", "up"), ("job", "x")]);
        assert_eq!(buf, l.encoded());
        assert_eq!(Labels::from_encoded(&buf), l);
        let mut m = std::collections::HashMap::new();
        m.insert(l.clone(), 1);
        assert_eq!(m.get(buf.as_str()), Some(&1));
        assert!(encode_sorted(&mut buf, [("b", "1"), ("a", "1")]).is_err());
        assert!(encode_sorted(&mut buf, [("a", "1"), ("a", "2")]).is_err());
    }

    #[test]
    fn filter_and_builder() {
        let l = Labels::from_pairs([("__name__", "m"), ("a", "1"), ("b", "2")]);
        assert_eq!(
            l.without_metric_name(),
            Labels::from_pairs([("a", "1"), ("b", "2")])
        );
        assert_eq!(l.keep_only(&["b"]), Labels::from_pairs([("b", "2")]));
        assert_eq!(
            l.drop_names(&["a", "__name__"]),
            Labels::from_pairs([("b", "2")])
        );
        let mut bld = l.to_builder();
        bld.set("a", "").set("c", "3");
        assert_eq!(
            bld.build(),
            Labels::from_pairs([("__name__", "m"), ("b", "2"), ("c", "3")])
        );
    }
}
