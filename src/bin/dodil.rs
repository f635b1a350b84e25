//! `dodil`: the command line. Thin on purpose; the commands live in `ignite-cli`.

fn main() {
    ignite_cli::main()
}
