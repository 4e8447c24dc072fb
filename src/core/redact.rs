//! Masking payment card numbers in chat text before it is stored (when policy says so).
//!
//! A card number is a run of 13–19 digits, optionally grouped by single spaces or dashes,
//! that passes the Luhn check. All but the last four digits become `*`; separators stay.

/// Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// Replace every Luhn-valid 13–19 digit card number in `text`.
pub fn mask_card_numbers(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A run: digits, with single spaces or dashes between digits.
        let mut positions = vec![i];
        let mut j = i + 1;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                positions.push(j);
                j += 1;
            } else if (bytes[j] == b' ' || bytes[j] == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
            {
                j += 1;
            } else {
                break;
            }
        }
        // Group boundaries (digit indexes where a group starts or ends): a card number
        // starts at a group start and ends at a group end, never inside a group.
        let starts: Vec<usize> = (0..positions.len())
            .filter(|&k| k == 0 || positions[k] != positions[k - 1] + 1)
            .collect();
        let is_end = |k: usize| k == positions.len() || starts.contains(&k);
        // Mask the longest Luhn-valid window of 13–19 digits, leftmost first.
        let mut s = 0;
        while s < starts.len() {
            let k = starts[s];
            let mut matched = 0;
            for len in (13..=19).rev() {
                if k + len > positions.len() || !is_end(k + len) {
                    continue;
                }
                let digits: Vec<u8> = positions[k..k + len].iter().map(|&p| bytes[p]).collect();
                if luhn_valid(&digits) {
                    matched = len;
                    break;
                }
            }
            if matched > 0 {
                for &p in &positions[k..k + matched - 4] {
                    out[p] = b'*';
                }
                while s < starts.len() && starts[s] < k + matched {
                    s += 1;
                }
            } else {
                s += 1;
            }
        }
        i = j;
    }
    // Only ASCII digits were replaced by ASCII '*', so this is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_grouped_and_plain_card_numbers() {
        assert_eq!(
            mask_card_numbers("card 4111 1111 1111 1111 ok"),
            "card **** **** **** 1111 ok"
        );
        assert_eq!(
            mask_card_numbers("4111-1111-1111-1111"),
            "****-****-****-1111"
        );
        assert_eq!(
            mask_card_numbers("x5500005555555559y"),
            "x************5559y"
        );
        assert_eq!(
            mask_card_numbers("amex 378282246310005."),
            "amex ***********0005."
        );
    }

    #[test]
    fn leaves_other_numbers_alone() {
        // Not Luhn-valid, too short, or too long.
        assert_eq!(
            mask_card_numbers("4111 1111 1111 1112"),
            "4111 1111 1111 1112"
        );
        assert_eq!(
            mask_card_numbers("order 123456789012"),
            "order 123456789012"
        );
        assert_eq!(mask_card_numbers("call 555-0100"), "call 555-0100");
        assert_eq!(
            mask_card_numbers("4111  1111 1111 1111"),
            "4111  1111 1111 1111"
        );
        assert_eq!(
            mask_card_numbers("ünïcødé 4111111111111111 ✓"),
            "ünïcødé ************1111 ✓"
        );
    }

    proptest! {
        #[test]
        fn a_valid_card_anywhere_is_masked(prefix in "[a-z ]{0,8}", body in proptest::collection::vec(0u8..10, 12..=18), suffix in "[a-z .]{0,8}") {
            // Complete the number with its Luhn check digit.
            let mut digits: Vec<u8> = body.iter().map(|d| b'0' + d).collect();
            for c in b'0'..=b'9' {
                let mut t = digits.clone();
                t.push(c);
                if luhn_valid(&t) { digits = t; break; }
            }
            let number = String::from_utf8(digits.clone()).unwrap();
            let text = format!("{prefix}{number}{suffix}");
            let masked = mask_card_numbers(&text);
            prop_assert_eq!(masked.len(), text.len());
            prop_assert!(!masked.contains(&number));
            prop_assert!(masked.contains(&number[number.len() - 4..]));
        }

        #[test]
        fn never_panics_and_keeps_length(s in ".{0,60}") {
            prop_assert_eq!(mask_card_numbers(&s).len(), s.len());
        }
    }
}
