//! Property tests: decoders never panic on arbitrary input, and native lines round-trip.

use std::collections::BTreeMap;
use std::sync::Arc;

use herd_ingest::decode::encode_native;
use herd_ingest::{ContainerRef, Decoder, Event, Normalizer, Observation, Payload, Record};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    // Hostile names: path separators, control characters, quotes, non-ASCII.
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('z'),
            Just('0'),
            Just('.'),
            Just('/'),
            Just('_'),
            Just('-'),
            Just('\n'),
            Just('\u{1b}'),
            Just('"'),
            Just('\\'),
            Just('é'),
            Just('✓'),
            Just(' '),
        ],
        1..24,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Oom),
        Just(Event::Restart),
        any::<Option<i64>>().prop_map(|exit_code| Event::Die { exit_code }),
        (
            name(),
            proptest::collection::vec(name(), 0..3),
            proptest::option::of(name())
        )
            .prop_map(|(process, args, user)| Event::Exec {
                process,
                args,
                user
            }),
        name().prop_map(|dest| Event::Connect { dest }),
        (name(), name(), proptest::option::of(name())).prop_map(|(rule, priority, process)| {
            Event::Falco {
                rule,
                priority,
                process,
                cmdline: None,
                user: None,
                dest: None,
                tags: vec!["T1059".into()],
            }
        }),
    ]
}

fn observation() -> impl Strategy<Value = Observation> {
    let metrics = proptest::collection::btree_map(name(), -1e12f64..1e12, 1..6)
        .prop_map(|m| Payload::Metrics(m.into_iter().map(|(k, x)| (k.into(), x)).collect()));
    let payload = prop_oneof![metrics, event().prop_map(Payload::Event)];
    (
        946_684_800_000i64..7_258_118_400_000,
        name(),
        proptest::option::of(name()),
        name(),
        proptest::option::of(name()),
        proptest::collection::btree_map(name(), name(), 0..4),
        proptest::option::of(name()),
        payload,
    )
        .prop_map(
            |(ts_ms, id, cname, image, digest, labels, host, payload)| Observation {
                ts_ms,
                container: Arc::new(ContainerRef {
                    id: id.into(),
                    name: cname.map(Into::into),
                    image: image.into(),
                    image_digest: digest.map(Into::into),
                    labels: labels.into_iter().collect::<BTreeMap<_, _>>().into(),
                    host: host.map(Into::into),
                }),
                payload,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let d = Decoder::default();
        let mut n = Normalizer::default();
        if let Ok(rec) = d.decode(&bytes) {
            let _ = n.normalize(rec, &mut Vec::new());
        }
    }

    #[test]
    fn json_shaped_noise_never_panics(
        keys in proptest::collection::vec(prop_oneof![
            Just("ts"), Just("container_id"), Just("image"), Just("metrics"), Just("event"),
            Just("read"), Just("cpu_stats"), Just("precpu_stats"), Just("memory_stats"),
            Just("Type"), Just("Action"), Just("Actor"), Just("time"), Just("rule"),
            Just("output_fields"), Just("labels"), Just("value"), Just("timestamp"),
            Just("stats"), Just("container"), Just("networks"), Just("blkio_stats"),
        ], 1..8),
        values in proptest::collection::vec(prop_oneof![
            Just("null".to_owned()), Just("{}".to_owned()), Just("[]".to_owned()),
            Just("-1".to_owned()), Just("1e400".to_owned()), Just("\"2026-11-23T10:00:00Z\"".to_owned()),
            Just("{\"kind\":\"exec\"}".to_owned()), Just("{\"x\":\"y\"}".to_owned()),
            Just("{\"cpu_usage\":{\"total_usage\":-5}}".to_owned()),
            any::<i64>().prop_map(|i| i.to_string()),
            "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
        ], 8),
    ) {
        let body: Vec<String> = keys.iter().zip(values.iter()).map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let line = format!("{{{}}}", body.join(","));
        let d = Decoder::default();
        let mut n = Normalizer::default();
        if let Ok(rec) = d.decode(line.as_bytes()) {
            let _ = n.normalize(rec, &mut Vec::new());
        }
    }

    #[test]
    fn native_lines_round_trip(o in observation()) {
        let line = encode_native(&o);
        let back = Decoder::default().decode(line.as_bytes());
        let Ok(Record::Native(back)) = back else {
            return Err(TestCaseError::fail(format!("did not decode: {line}")));
        };
        // Time is written with millisecond precision, which is what the model holds.
        prop_assert_eq!(back, o);
    }
}
