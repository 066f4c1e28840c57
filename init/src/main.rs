//! `cerana-init`: the image's `/init`. See the crate docs and init/README.md.

fn main() {
    let started = std::time::Instant::now();
    let code = cerana_init::run::run(std::env::args().skip(1).collect(), started);
    std::process::exit(code);
}
