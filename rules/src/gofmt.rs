//! Go's float formatting, as Prometheus's templates and messages print numbers (`%v`, `%.4g`,
//! `%f`, `%e`), so annotations read exactly as they would from Prometheus.

/// Go's `%v` / `strconv.FormatFloat(v, 'g', -1, 64)`: shortest round-trip digits, exponent form
/// when the exponent is below -4 or at least 6 (so `1e+06`, as `fmt.Println` prints it).
pub fn shortest_g(v: f64) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let e = format!("{v:e}");
    let (mant, exp) = split_exp(&e);
    if !(-4..6).contains(&exp) {
        format!("{mant}e{}", exp_str(exp))
    } else {
        format!("{v}")
    }
}

/// Go's `%.Ng`: `prec` significant digits, trailing zeros removed, exponent form when the exponent
/// is below -4 or at least `prec`.
pub fn g(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let prec = prec.max(1);
    if v == 0.0 {
        return "0".into();
    }
    let e = format!("{:.*e}", prec - 1, v);
    let (mant, exp) = split_exp(&e);
    if exp < -4 || exp >= prec as i32 {
        format!("{}e{}", trim_zeros(mant), exp_str(exp))
    } else {
        let decimals = (prec as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

/// Go's `%.Nf`.
pub fn f(v: f64, prec: usize) -> String {
    special(v).unwrap_or_else(|| format!("{v:.prec$}"))
}

/// Go's `%.Ne`.
pub fn e(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let s = format!("{v:.prec$e}");
    let (mant, exp) = split_exp(&s);
    format!("{mant}e{}", exp_str(exp))
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v == f64::INFINITY {
        Some("+Inf".into())
    } else if v == f64::NEG_INFINITY {
        Some("-Inf".into())
    } else {
        None
    }
}

fn split_exp(s: &str) -> (&str, i32) {
    match s.split_once('e') {
        Some((m, e)) => (m, e.parse().unwrap_or(0)),
        None => (s, 0),
    }
}

fn exp_str(exp: i32) -> String {
    if exp < 0 {
        format!("-{:02}", -exp)
    } else {
        format!("+{exp:02}")
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_go() {
        assert_eq!(shortest_g(0.0523), "0.0523");
        assert_eq!(shortest_g(1e21), "1e+21");
        assert_eq!(shortest_g(123456789.0), "1.23456789e+08");
        assert_eq!(shortest_g(123456.0), "123456");
        assert_eq!(shortest_g(0.00001), "1e-05");
        assert_eq!(shortest_g(2.0), "2");
        assert_eq!(g(1234.5678, 4), "1235");
        assert_eq!(g(2.5, 4), "2.5");
        assert_eq!(g(12345.0, 4), "1.234e+04");
        assert_eq!(g(0.000012345, 4), "1.234e-05");
        assert_eq!(g(100.0, 4), "100");
        assert_eq!(g(f64::NAN, 4), "NaN");
        assert_eq!(f(1.23456, 2), "1.23");
        assert_eq!(e(1234.5, 2), "1.23e+03");
    }
}
