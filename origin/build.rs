//! Records the git commit and build date that `--version` prints (see `kokoa-build-info`).

fn main() {
    kokoa_build_info::emit();
}
