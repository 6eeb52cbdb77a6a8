//! Quotes on HubSpot's side, shown on the partner deal (SPEC §1.3): the partner sees each
//! quote's title, amount, status and link, kept current. Pure: the engine reads the quotes
//! associated with the HubSpot deal and writes [`summary`] to the partner deal's
//! `dealsync_quotes` when it differs.

use crate::crm::Record;

/// The key of one quote request: the same request (deal and text) always maps to one task.
pub fn request_key(partner: &str, deal: &str, text: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(text.as_bytes());
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{partner}:{deal}:quote-request:{hex}")
}

/// Quote properties read from HubSpot's portal.
pub fn props() -> Vec<String> {
    [
        "hs_title",
        "hs_quote_amount",
        "hs_currency",
        "hs_status",
        "hs_quote_link",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// One line per quote, in id order: `title | amount currency | status | link`. Empty when the
/// deal has no quotes.
pub fn summary(quotes: &[Record]) -> String {
    let mut sorted: Vec<&Record> = quotes.iter().collect();
    sorted.sort_by_key(|r| (r.id.len(), r.id.clone()));
    sorted
        .iter()
        .map(|q| {
            let amount = match (q.get("hs_quote_amount"), q.get("hs_currency")) {
                (Some(a), Some(c)) => format!("{a} {c}"),
                (Some(a), None) => a.to_owned(),
                _ => "-".into(),
            };
            format!(
                "{} | {} | {} | {}",
                q.get("hs_title").unwrap_or("(untitled quote)"),
                amount,
                q.get("hs_status").unwrap_or("-"),
                q.get("hs_quote_link").unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(id: &str, props: &[(&str, &str)]) -> Record {
        let mut r = Record {
            id: id.into(),
            ..Default::default()
        };
        for (k, v) in props {
            r.properties.insert((*k).into(), Some((*v).into()));
        }
        r
    }

    #[test]
    fn one_line_per_quote_in_id_order_with_gaps_marked() {
        let q = [
            quote("10", &[("hs_title", "Renewal")]),
            quote(
                "9",
                &[
                    ("hs_title", "Sales Hub"),
                    ("hs_quote_amount", "1200"),
                    ("hs_currency", "EUR"),
                    ("hs_status", "APPROVED"),
                    ("hs_quote_link", "https://example.com/q/9"),
                ],
            ),
        ];
        assert_eq!(
            summary(&q),
            "Sales Hub | 1200 EUR | APPROVED | https://example.com/q/9\nRenewal | - | - | -"
        );
        assert_eq!(summary(&[]), "");
    }
}
