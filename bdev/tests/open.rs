//! `nvmfd_bdev::open` builds the backend a config entry names.

mod common;

use common::*;
use nvmfd_bdev::Op;
use nvmfd_config::{BdevConfig, BdevKind};
use nvmfd_p2p::mem::IoBuf;

#[test]
fn opens_every_kind() {
    let f = TempFile::new("open", 1 << 20);
    let cases = [
        (
            BdevKind::Malloc {
                size: 1 << 20,
                block_size: 512,
            },
            "malloc",
            2048,
        ),
        (
            BdevKind::Null {
                size: 1 << 20,
                block_size: 4096,
            },
            "null",
            256,
        ),
        (
            BdevKind::Uring {
                path: f.0.clone(),
                block_size: None,
                passthrough: false,
            },
            "uring",
            256,
        ),
        (
            BdevKind::Uring {
                path: f.0.clone(),
                block_size: Some(512),
                passthrough: false,
            },
            "uring",
            2048,
        ),
    ];
    for (kind, want_kind, want_blocks) in cases {
        let cfg = BdevConfig {
            name: format!("b-{want_kind}"),
            uuid: None,
            kind,
        };
        let b = nvmfd_bdev::open(&cfg).expect("open");
        assert_eq!(b.name(), cfg.name);
        assert_eq!(
            (b.info().kind, b.info().num_blocks),
            (want_kind, want_blocks)
        );
        let mut ch = b.channel().expect("channel");
        let bs = b.info().block_size;
        write(&mut *ch, 1, &pattern(1, 1, bs, 1), bs).expect("write");
        assert_eq!(run(&mut *ch, Op::Flush, IoBuf::new(0)).result, Ok(()));
    }
}

#[test]
fn reports_bad_entries() {
    let bad = BdevConfig {
        name: "m".into(),
        uuid: None,
        kind: BdevKind::Malloc {
            size: 1000,
            block_size: 512,
        },
    };
    let e = nvmfd_bdev::open(&bad).err().expect("size not a multiple");
    assert!(e.to_string().starts_with("m: "), "{e}");
    let f = TempFile::new("open-odd", 6144);
    let bad = BdevConfig {
        name: "u".into(),
        uuid: None,
        kind: BdevKind::Uring {
            path: f.0.clone(),
            block_size: None,
            passthrough: false,
        },
    };
    let e = nvmfd_bdev::open(&bad).err().expect("size not a multiple");
    assert!(e.to_string().contains(&*f.0.to_string_lossy()), "{e}");
}
