//! `dodil`: the command line. Thin on purpose; the commands live in `ignite-cli`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    ignite_cli::main()
}
