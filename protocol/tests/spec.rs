//! The spec (README.md) and the code agree: every JSON example in it parses and serializes back,
//! every message type has an example, and every error code has a row in the error table.

use std::collections::BTreeSet;

use mixer_protocol::{
    ClientMessage, ErrorCode, ServerMessage, parse_client_message, parse_server_message,
};

/// Every JSON example in the spec (README.md) is a valid message that serializes back to
/// the same text, except that an example may leave out fields that have a default and are
/// always serialized (`mode`, `role`, `floor`).
///
/// `chat` and `room_info` name both a client and a server message, and a client parses a
/// server message's fields it does not know as unknown fields; so an example belongs to the
/// direction whose message shows exactly its fields, and exactly one direction must fit.
#[test]
fn spec_examples_parse() {
    let spec = include_str!("../README.md");
    let mut examples: Vec<&str> = spec
        .split("```json\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().trim())
        .collect();
    // The example sessions' table rows hold one JSON message each, in backquotes.
    examples.extend(
        spec.lines()
            .filter(|line| line.starts_with("| ") && line.contains("`{\"type\""))
            .filter_map(|line| line.split('`').nth(1)),
    );
    assert!(
        examples.len() >= 60,
        "found only {} examples",
        examples.len()
    );
    let mut types = BTreeSet::new();
    for json in examples {
        let client = parse_client_message(json).ok().map(|msg| {
            assert_eq!(
                parse_client_message(&msg.to_json()),
                Ok(msg.clone()),
                "{json}"
            );
            (("client", msg.type_name()), msg.to_json())
        });
        let server = parse_server_message(json).ok().map(|msg| {
            assert_eq!(
                parse_server_message(&msg.to_json()),
                Ok(msg.clone()),
                "{json}"
            );
            (("server", msg.type_name()), msg.to_json())
        });
        let fits: Vec<_> = [client, server]
            .into_iter()
            .flatten()
            .filter(|(_, serialized)| shows_same_message(json, serialized))
            .collect();
        assert_eq!(fits.len(), 1, "{json} is serialized as {fits:?}");
        types.insert(fits[0].0);
    }
    // Every message type of each direction has an example.
    let all: BTreeSet<_> = ClientMessage::TYPES
        .iter()
        .map(|&t| ("client", t))
        .chain(ServerMessage::TYPES.iter().map(|&t| ("server", t)))
        .collect();
    assert_eq!(types, all);
}

/// Whether `example` is the text `serialized`, or the same message with only defaulted
/// fields left out.
fn shows_same_message(example: &str, serialized: &str) -> bool {
    if example == serialized {
        return true;
    }
    let example: serde_json::Value = serde_json::from_str(example).expect(example);
    let full: serde_json::Value = serde_json::from_str(serialized).expect(serialized);
    // Same fields, so the text must be the same too (field order, spacing).
    omitted_defaults(&example, &full).is_some_and(|omitted| omitted > 0)
}

/// How many defaulted fields `example` leaves out of `full`, or `None` if it differs from
/// `full` in any other way.
fn omitted_defaults(example: &serde_json::Value, full: &serde_json::Value) -> Option<usize> {
    use serde_json::Value;
    match (example, full) {
        (Value::Object(example), Value::Object(full)) => {
            if !example.keys().all(|k| full.contains_key(k)) {
                return None;
            }
            let mut omitted = 0;
            for (key, value) in full {
                match example.get(key) {
                    Some(shown) => omitted += omitted_defaults(shown, value)?,
                    None if ["mode", "role", "floor"].contains(&key.as_str()) => omitted += 1,
                    None => return None,
                }
            }
            Some(omitted)
        }
        (Value::Array(example), Value::Array(full)) if example.len() == full.len() => example
            .iter()
            .zip(full)
            .map(|(shown, value)| omitted_defaults(shown, value))
            .sum(),
        _ => (example == full).then_some(0),
    }
}

/// Every error code appears in the spec's error table.
#[test]
fn spec_documents_every_error_code() {
    let spec = include_str!("../README.md");
    for &code in ErrorCode::ALL {
        let row = format!("| `{}` |", code.as_str());
        assert!(spec.contains(&row), "README.md has no row for {code}");
    }
}

/// The spec's "Control budget" table gives every client message type the cost the code charges,
/// and its numbers for the bucket are the code's.
#[test]
fn spec_budget_table_matches_the_code() {
    let spec = include_str!("../README.md");
    let section = spec
        .split("## Control budget")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Control budget section");
    let prose = section.split_whitespace().collect::<Vec<_>>().join(" ");
    let burst = format!("holds {} tokens", mixer_protocol::CONTROL_BUDGET_BURST);
    let refill = format!(
        "refills at {} tokens per second",
        mixer_protocol::CONTROL_BUDGET_REFILL_PER_SECOND
    );
    assert!(prose.contains(&burst), "the spec should say it {burst}");
    assert!(prose.contains(&refill), "the spec should say it {refill}");
    let mut documented = std::collections::BTreeMap::new();
    for row in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Cost"))
    {
        let mut cells = row.split('|').map(str::trim).filter(|c| !c.is_empty());
        let Some(Ok(cost)) = cells.next().map(str::parse::<u32>) else {
            continue;
        };
        let names = cells.next().unwrap_or_default();
        for name in names.split('`').skip(1).step_by(2) {
            if ClientMessage::TYPES.contains(&name) {
                assert!(documented.insert(name, cost).is_none(), "{name} twice");
            }
        }
        if names.contains("not valid JSON") {
            assert_eq!(cost, mixer_protocol::INVALID_MESSAGE_COST);
        }
    }
    let samples = crate::support::client_samples();
    for &name in ClientMessage::TYPES {
        let sample = samples
            .iter()
            .find(|m| m.type_name() == name)
            .unwrap_or_else(|| panic!("no sample of {name}"));
        assert_eq!(
            documented.get(name),
            Some(&sample.budget_cost()),
            "{name}: the spec and the code disagree on its cost"
        );
    }
}
