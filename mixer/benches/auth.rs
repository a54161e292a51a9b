//! What access control adds to a join: verifying its token (HS256 and EdDSA) and normalising
//! and keying its display name. Compare with what a join costs otherwise (a mixer-thread
//! command, a roster message to everyone; see the README's numbers).
//!
//! `cargo bench -p mixer --bench auth`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use mixer::auth::{Claims, Signer, Verifier, unix_now};
use mixer_protocol::{Role, name_key, normalise_name};

fn claims() -> Claims {
    Claims {
        sub: "user-1234567890".into(),
        name: Some("Alice Example".into()),
        role: Role::Speaker,
        rooms: vec!["team-*".into(), "standup".into()],
        can_create_rooms: false,
        can_list_rooms: true,
        admin: false,
        exp: unix_now() + 3600,
        nbf: None,
        iat: Some(unix_now()),
    }
}

fn bench_auth(c: &mut Criterion) {
    let secret = b"0123456789abcdef0123456789abcdef";
    let hmac = Signer::hmac(secret).sign(&claims()).expect("sign");
    let hmac_verifier = Verifier::hmac(secret);
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ed = Signer::from_file(&fixtures.join("ed25519-private.pem"))
        .expect("private key")
        .sign(&claims())
        .expect("sign");
    let ed_verifier =
        Verifier::from_file(&fixtures.join("ed25519-public.pem")).expect("public key");
    let mut group = c.benchmark_group("auth");
    group.bench_function("verify_hs256", |b| {
        b.iter(|| hmac_verifier.verify(black_box(&hmac)).expect("valid"))
    });
    group.bench_function("verify_eddsa", |b| {
        b.iter(|| ed_verifier.verify(black_box(&ed)).expect("valid"))
    });
    group.bench_function("reject_forged_hs256", |b| {
        let forged = Verifier::hmac(b"another secret of thirty-two bytes!");
        b.iter(|| forged.verify(black_box(&hmac)).expect_err("forged"))
    });
    group.bench_function("name_normalise_and_key", |b| {
        b.iter(|| {
            let name = normalise_name(black_box("Zoe\u{0308} Ivanova")).expect("valid");
            name_key(&name)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_auth);
criterion_main!(benches);
