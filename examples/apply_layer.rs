//! Apply one layer tar (plain, gzip or zstd, sniffed) into a directory with
//! cri-imaged's native applier, as the pull does for a base layer (whiteouts
//! applied by removal; `--overlay` for overlayfs form), and print the time,
//! entries and bytes. For measuring the applier alone against `tar -x` and
//! under `strace -c`:
//!
//!   cargo run --release --example apply_layer -- LAYER DIR [--overlay] [--lower DIR]...
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use cri_imaged::layer::{apply_tar, ApplyOptions, Whiteouts};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: apply_layer LAYER DIR [--overlay] [--lower DIR]...");
        std::process::exit(2);
    }
    let (layer, dir) = (PathBuf::from(&args[0]), PathBuf::from(&args[1]));
    let mut whiteouts = Whiteouts::Remove;
    let mut parents = Vec::new();
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--overlay" => whiteouts = Whiteouts::Overlay,
            "--lower" => parents.push(PathBuf::from(rest.next().expect("--lower DIR"))),
            other => panic!("unknown argument {other}"),
        }
    }
    let mut f = BufReader::with_capacity(1 << 20, std::fs::File::open(&layer).expect("open layer"));
    let mut magic = [0u8; 4];
    let n = f.get_mut().read(&mut magic).expect("read layer");
    let f = std::io::Cursor::new(magic[..n].to_vec()).chain(f);
    let input: Box<dyn Read> = match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(f).expect("zstd")),
        _ => Box::new(f),
    };
    std::fs::create_dir_all(&dir).expect("create DIR");
    let opts = ApplyOptions {
        whiteouts,
        lower_fds: &[],
        parents: &parents,
        cancel: None,
        limits: cri_imaged::layer::Limits::default(),
    };
    let t = Instant::now();
    let stats = apply_tar(&dir, input, &opts).expect("apply");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "applied {} entries, {} bytes in {:.3} s ({:.1} us per entry)",
        stats.entries,
        stats.bytes,
        secs,
        secs * 1e6 / stats.entries.max(1) as f64
    );
}
