//! `cargo run --release -p curvine-ufs --example check -- URI [key=value…]`:
//! builds a Ufs and runs `check`, printing the outcome and how long it took.
//! Handy for trying credentials and endpoints before `cv mount`.

use std::collections::BTreeMap;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(uri) = args.next() else {
        eprintln!("usage: check URI [key=value…]");
        std::process::exit(2);
    };
    let mut opts: BTreeMap<String, String> = args.filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into()))).collect();
    let scheme = uri.split("://").next().unwrap_or("");
    opts.extend(curvine_ufs::env_options(scheme, &opts));
    println!("options: {:?}", curvine_ufs::redact(&opts));
    let t = Instant::now();
    let res = match curvine_ufs::Ufs::new(&uri, &opts) {
        Ok(u) => u.check().await,
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => println!("ok ({:?})", t.elapsed()),
        Err(e) => println!("{:?}: {e} ({:?})", e.kind(), t.elapsed()),
    }
}
