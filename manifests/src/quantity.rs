//! Resource quantities (`500m`, `1Gi`, `2e3`), parsed well enough to compare
//! requests with limits and to round values the way the apiserver does.
//!
//! Upstream keeps arbitrary precision (`inf.Dec`); we hold the value as an
//! integer count of nano-units in an `i128`, which covers everything from `1n`
//! to well past `8Ei` exactly. Digits finer than a nano-unit round up (towards
//! positive infinity), as upstream does when it has to drop precision.

use std::cmp::Ordering;
use std::fmt;

/// Upstream's message for a malformed quantity (apimachinery `ErrFormatWrong`),
/// which includes the expression every quantity must match.
pub const QUANTITY_FORMAT_MESSAGE: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// Nano-units per unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text does not follow the quantity grammar.
    #[error("{QUANTITY_FORMAT_MESSAGE}")]
    Format,
    /// The text is well formed but the value does not fit our representation.
    #[error("quantity is too large")]
    TooLarge,
}

/// A parsed resource quantity, ordered by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity {
    nanos: i128,
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

/// The multiplier a suffix stands for.
enum Scale {
    /// `10^exp`
    Decimal(i32),
    /// `2^exp`
    Binary(u32),
}

impl Quantity {
    /// A quantity of exactly `nanos` nano-units.
    #[must_use]
    pub fn from_nanos(nanos: i128) -> Self {
        Self { nanos }
    }

    /// The value in nano-units (`1` is `1n`, `1_000_000_000` is `1`).
    #[must_use]
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// The value in milli-units, rounded up (upstream `MilliValue` rounds up too).
    #[must_use]
    pub fn milli_value_ceil(self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// Whether the value is below zero.
    #[must_use]
    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// Whether the value has digits finer than a milli-unit, which the
    /// apiserver rounds away (`SetDefaults_ResourceList`).
    #[must_use]
    pub fn has_sub_milli_precision(self) -> bool {
        self.nanos % 1_000_000 != 0
    }

    /// Parses upstream's quantity grammar: an optionally signed decimal number
    /// followed by a binary-SI suffix (`Ki`..`Ei`), a decimal-SI suffix
    /// (`n u m "" k M G T P E`) or a decimal exponent (`e3`, `E-2`).
    /// Surrounding whitespace is ignored, as upstream's JSON decoding does.
    ///
    /// # Errors
    /// [`QuantityError::Format`] when the text is not a quantity,
    /// [`QuantityError::TooLarge`] when the value does not fit in 128 bits of nano-units.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let text = text.trim();
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(QuantityError::Format);
        }
        let scale = parse_suffix(suffix)?;

        // The digits as one integer, with `fraction.len()` implied decimals.
        let mut mantissa: i128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(digit - b'0')))
                .ok_or(QuantityError::TooLarge)?;
        }
        let decimals = i32::try_from(fraction.len()).map_err(|_| QuantityError::TooLarge)?;

        let nanos = match scale {
            Scale::Decimal(exp) => scale_pow10(mantissa, exp + 9 - decimals)?,
            Scale::Binary(exp) => {
                let scaled = mantissa
                    .checked_mul(1_i128 << exp)
                    .ok_or(QuantityError::TooLarge)?;
                scale_pow10(scaled, 9 - decimals)?
            }
        };
        // Rounding happened on the magnitude; negate afterwards so `-0.1n`
        // becomes `-1n` (away from zero), the conservative choice for limits.
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// Renders the value in the largest decimal-SI unit that keeps it exact
    /// (`1500m`, `2`, `5k`); used when we have to write a rounded value back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(i128, &str); 3] = [(NANOS_PER_UNIT, ""), (1_000_000, "m"), (1_000, "u")];
        for (per, suffix) in UNITS {
            if self.nanos % per == 0 {
                return write!(f, "{}{}", self.nanos / per, suffix);
            }
        }
        write!(f, "{}n", self.nanos)
    }
}

fn parse_suffix(suffix: &str) -> Result<Scale, QuantityError> {
    let scale = match suffix {
        "" => Scale::Decimal(0),
        "n" => Scale::Decimal(-9),
        "u" => Scale::Decimal(-6),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        "Ki" => Scale::Binary(10),
        "Mi" => Scale::Binary(20),
        "Gi" => Scale::Binary(30),
        "Ti" => Scale::Binary(40),
        "Pi" => Scale::Binary(50),
        "Ei" => Scale::Binary(60),
        _ => {
            // A decimal exponent: `e` or `E` then an optionally signed integer.
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or(QuantityError::Format)?;
            let digits = exponent.trim_start_matches(['+', '-']);
            if digits.is_empty()
                || exponent.len() - digits.len() > 1
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(QuantityError::Format);
            }
            let value: i32 = exponent.parse().map_err(|_| QuantityError::TooLarge)?;
            Scale::Decimal(value)
        }
    };
    Ok(scale)
}

/// `value * 10^exp`, rounding the magnitude up when `exp` is negative.
fn scale_pow10(value: i128, exp: i32) -> Result<i128, QuantityError> {
    if value == 0 {
        return Ok(0);
    }
    if exp >= 0 {
        let factor = 10_i128
            .checked_pow(exp.unsigned_abs())
            .ok_or(QuantityError::TooLarge)?;
        value.checked_mul(factor).ok_or(QuantityError::TooLarge)
    } else {
        // Any divisor beyond i128's range leaves a non-zero value below one
        // nano-unit, which rounds up to exactly one.
        Ok(match 10_i128.checked_pow(exp.unsigned_abs()) {
            Some(divisor) => div_ceil(value, divisor),
            None => 1,
        })
    }
}

/// Division rounding towards positive infinity (`i128::div_ceil` is unstable).
fn div_ceil(value: i128, divisor: i128) -> i128 {
    let quotient = value / divisor;
    if value % divisor != 0 && (value > 0) == (divisor > 0) {
        quotient + 1
    } else {
        quotient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> i128 {
        Quantity::parse(text)
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
            .nanos()
    }

    #[test]
    fn parses_upstream_forms() {
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("1", 1_000_000_000),
            ("500m", 500_000_000),
            ("0.5", 500_000_000),
            (".5", 500_000_000),
            ("5.", 5_000_000_000),
            ("+2", 2_000_000_000),
            ("-2", -2_000_000_000),
            ("100n", 100),
            ("3u", 3_000),
            ("1k", 1_000_000_000_000),
            ("1M", 1_000_000 * NANOS_PER_UNIT),
            ("1G", 1_000_000_000 * NANOS_PER_UNIT),
            ("1E", 1_000_000_000_000_000_000 * NANOS_PER_UNIT),
            ("1Ki", 1024 * NANOS_PER_UNIT),
            ("1Mi", 1_048_576 * NANOS_PER_UNIT),
            ("1.5Gi", 1_610_612_736 * NANOS_PER_UNIT),
            ("8Ei", (8_i128 << 60) * NANOS_PER_UNIT),
            ("2e3", 2_000 * NANOS_PER_UNIT),
            ("2E3", 2_000 * NANOS_PER_UNIT),
            ("2e+3", 2_000 * NANOS_PER_UNIT),
            ("25e-2", 250_000_000),
            ("0.1n", 1),
            ("1e-20", 1),
            (" 1 ", NANOS_PER_UNIT),
        ];
        for (text, nanos) in cases {
            assert_eq!(q(text), *nanos, "{text}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for text in [
            "", "m", "1.2.3", "1x", "1 Gi", "1KI", "1ki", "1e", "1e+", "e3", "--1", "1e3.5", "1mi",
            "1Gii", ".", "+", "1e--3",
        ] {
            assert_eq!(
                Quantity::parse(text),
                Err(QuantityError::Format),
                "{text:?} must be rejected"
            );
        }
        assert_eq!(Quantity::parse("1e100"), Err(QuantityError::TooLarge));
        assert_eq!(
            Quantity::parse("99999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge)
        );
    }

    /// A small deterministic generator so the property tests need no extra crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn equivalent_spellings_agree() {
        let mut rng = XorShift(0x5eed_1234_abcd_9876);
        for _ in 0..2_000 {
            let n = i128::from(rng.next() % 1_000_000);
            assert_eq!(q(&format!("{n}Ki")), q(&format!("{}", n * 1024)));
            assert_eq!(q(&format!("{n}Mi")), q(&format!("{}Ki", n * 1024)));
            assert_eq!(q(&format!("{n}k")), q(&format!("{n}e3")));
            assert_eq!(q(&format!("{n}k")), q(&format!("{n}000")));
            assert_eq!(q(&format!("{n}")), q(&format!("{n}000m")));
            assert_eq!(q(&format!("{n}m")), q(&format!("{n}e-3")));
            assert_eq!(q(&format!("-{n}m")), -q(&format!("{n}m")));
            let m = i128::from(rng.next() % 1_000_000);
            assert_eq!(n.cmp(&m), q(&format!("{n}m")).cmp(&q(&format!("{m}m"))));
        }
    }

    #[test]
    fn display_round_trips() {
        let mut rng = XorShift(42);
        for _ in 0..2_000 {
            let nanos = i128::from(rng.next() % 10_000_000_000_000) - 5_000_000_000_000;
            let quantity = Quantity::from_nanos(nanos);
            assert_eq!(q(&quantity.to_string()), nanos);
        }
        assert_eq!(Quantity::from_nanos(1_500_000_000).to_string(), "1500m");
        assert_eq!(Quantity::from_nanos(2 * NANOS_PER_UNIT).to_string(), "2");
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let alphabet = b"0123456789.+-eEinumkKMGTP xI";
        let mut rng = XorShift(7);
        for _ in 0..20_000 {
            let len = (rng.next() % 12) as usize;
            let text: String = (0..len)
                .map(|_| char::from(alphabet[(rng.next() % alphabet.len() as u64) as usize]))
                .collect();
            let _ = Quantity::parse(&text);
        }
    }

    #[test]
    fn milli_value_rounds_up() {
        assert_eq!(Quantity::from_nanos(1).milli_value_ceil(), 1);
        assert_eq!(Quantity::from_nanos(1_000_000).milli_value_ceil(), 1);
        assert_eq!(Quantity::from_nanos(-1).milli_value_ceil(), 0);
        assert!(Quantity::from_nanos(1).has_sub_milli_precision());
        assert!(!Quantity::from_nanos(3_000_000).has_sub_milli_precision());
    }
}
