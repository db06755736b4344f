//! The agent's parsers under the fuzzer (`vigil-fuzz`): its config file, and its spool read back
//! from damaged files. `cargo test` runs a short pass; `bench/fuzz.sh` runs 100,000 inputs a
//! target.

use crate::{config, spool};

#[test]
fn fuzz_agent_config() {
    let mut seeds = vigil_fuzz::corpus("agent_config");
    seeds.extend(vigil_fuzz::files("examples", "toml"));
    seeds.extend(vigil_fuzz::files("packaging/etc", "toml"));
    let dict: &[&[u8]] = &[
        b"[agent]\n",
        b"[[push]]\n",
        b"[[scrape]]\n",
        b"[health]\n",
        b"[listen]\n",
        b"url = \"https://",
        b"ca_file = \"/x\"\n",
        b"interval = \"1s\"\n",
        b"max_bytes = \"1GiB\"\n",
        b"labels = { a = \"b\" }\n",
        b"99999999999999999999",
        b"\"\"",
        b"=",
    ];
    vigil_fuzz::run("agent_config", seeds, dict, 1 << 16, |b| {
        config::parse("agent.toml", &String::from_utf8_lossy(b)).is_ok()
    })
    .assert_clean();
}

/// A spool directory's files from one input: the first line is the `ack` file, the rest the
/// newest segment; an older segment holds two good frames.
fn spool_files(dir: &std::path::Path, input: &[u8], fix: bool) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let (ack, seg) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&b""[..], input),
    };
    let mut seg = seg.to_vec();
    if fix {
        vigil_fuzz::fix_frame_checksums(&mut seg);
    }
    let mut old = Vec::new();
    vigil_wire::frame::put(&mut old, b"first");
    vigil_wire::frame::put(&mut old, b"second");
    std::fs::write(dir.join(format!("{:020}.seg", 1)), &old).expect("write");
    std::fs::write(dir.join(format!("{:020}.seg", 2)), &seg).expect("write");
    if !ack.is_empty() {
        std::fs::write(dir.join("ack"), ack).expect("write");
    }
}

#[test]
fn fuzz_spool() {
    let dir = vigil_fuzz::scratch("spool");
    let mut seeds = vigil_fuzz::corpus("spool");
    for n in [0usize, 1, 3] {
        let mut seg = b"2 0\n".to_vec();
        for i in 0..n {
            vigil_wire::frame::put(&mut seg, format!("body {i}").as_bytes());
        }
        seeds.push(seg);
    }
    seeds.push(b"1 14\n".to_vec());
    let dict: &[&[u8]] = &[
        b"\x00\x00\x00\x00",
        b"\xff\xff\xff\xff",
        b"\x05\x00\x00\x00",
        b"1 ",
        b"2 ",
        b"\n",
    ];
    vigil_fuzz::run("spool", seeds, dict, 1 << 14, |b| {
        let mut read = false;
        for fix in [false, true] {
            spool_files(&dir, b, fix);
            let Ok((mut s, _)) = spool::Spool::open(&dir, 1 << 20) else {
                continue;
            };
            // Everything readable comes out, in a bounded number of steps, and appending works
            // after whatever recovery did.
            for _ in 0..1000 {
                match s.peek() {
                    Ok(Some(body)) => {
                        read = true;
                        if s.ack(body.len()).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let _ = s.append(b"after");
            let _ = s.peek();
        }
        read
    })
    .assert_clean();
    let _ = std::fs::remove_dir_all(&dir);
}
