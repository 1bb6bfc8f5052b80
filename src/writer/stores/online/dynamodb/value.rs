//! Feature values (JSON text) as DynamoDB attributes, and DynamoDB's equality.

use aws_sdk_dynamodb::types::AttributeValue;

/// The DynamoDB attribute for a value given as JSON text: numbers as N (in
/// plain decimal form), strings as S, booleans as BOOL, null as NULL, and
/// lists and objects as S holding their compact JSON text.
pub fn attribute_value(value_json: &str) -> Result<AttributeValue, String> {
    let v: serde_json::Value =
        serde_json::from_str(value_json).map_err(|e| format!("value is not JSON: {e}"))?;
    Ok(match v {
        serde_json::Value::Null => AttributeValue::Null(true),
        serde_json::Value::Bool(b) => AttributeValue::Bool(b),
        serde_json::Value::Number(n) => AttributeValue::N(dynamo_number(&n.to_string())?),
        serde_json::Value::String(s) => AttributeValue::S(s),
        v @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
            AttributeValue::S(v.to_string())
        }
    })
}

/// A number as DynamoDB holds it: the sign, the significant digits without
/// leading or trailing zeros (empty for zero), and the power of ten of the
/// last digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decimal {
    pub(super) negative: bool,
    pub(super) digits: String,
    pub(super) scale: i64,
}

impl Decimal {
    /// Parses JSON numbers and DynamoDB's own renderings (`1E+2`, `.5`, `+3`).
    pub(super) fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let all = format!("{int}{frac}");
        let lead_trimmed = all.trim_start_matches('0');
        let digits = lead_trimmed.trim_end_matches('0');
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits: String::new(),
                scale: 0,
            });
        }
        let trailing = i64::try_from(lead_trimmed.len() - digits.len()).ok()?;
        let frac_len = i64::try_from(frac.len()).ok()?;
        Some(Decimal {
            negative,
            digits: digits.to_string(),
            scale: exponent.checked_sub(frac_len)?.checked_add(trailing)?,
        })
    }

    /// Power of ten of the most significant digit.
    pub(super) fn magnitude(&self) -> i64 {
        self.scale + self.digits.len() as i64 - 1
    }

    /// Plain decimal text, no exponent: `0.5`, `-120`, `0`.
    pub(super) fn render(&self) -> String {
        if self.digits.is_empty() {
            return "0".into();
        }
        let sign = if self.negative { "-" } else { "" };
        let n = self.digits.len();
        if self.scale >= 0 {
            return format!("{sign}{}{}", self.digits, "0".repeat(self.scale as usize));
        }
        let frac = self.scale.unsigned_abs() as usize;
        if n > frac {
            format!(
                "{sign}{}.{}",
                &self.digits[..n - frac],
                &self.digits[n - frac..]
            )
        } else {
            format!("{sign}0.{}{}", "0".repeat(frac - n), self.digits)
        }
    }
}

/// DynamoDB numbers: at most 38 significant digits, magnitude 1E-130 to
/// 9.99...E+125. Anything else is refused here rather than by the service.
pub(super) fn dynamo_number(text: &str) -> Result<String, String> {
    let d = Decimal::parse(text).ok_or_else(|| format!("{text} is not a number"))?;
    if d.digits.len() > 38 {
        return Err(format!(
            "{text} has {} significant digits; DynamoDB numbers hold at most 38",
            d.digits.len()
        ));
    }
    if !d.digits.is_empty() && !(-130..=125).contains(&d.magnitude()) {
        return Err(format!(
            "{text} is outside DynamoDB's number range (1E-130 to 1E+126 in magnitude)"
        ));
    }
    Ok(d.render())
}

/// Equal as DynamoDB compares them (numbers by value).
pub(super) fn same_value(a: &AttributeValue, b: &AttributeValue) -> bool {
    match (a, b) {
        (AttributeValue::N(x), AttributeValue::N(y)) => {
            x == y || Decimal::parse(x).is_some_and(|x| Decimal::parse(y) == Some(x))
        }
        _ => a == b,
    }
}
