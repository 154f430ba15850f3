# Sourced by scripts/check and scripts/demo.
# rust-toolchain.toml pins 1.95.0, the machines' stable toolchain. Where rustup does not
# know it by that name, point the name at the installed stable toolchain instead of
# letting rustup try to download one (these machines reach only package registries).
if command -v rustup >/dev/null 2>&1 && ! rustup toolchain list | grep -q '^1\.95\.0'; then
  sysroot="$(rustup run stable rustc --print sysroot)"
  if [[ "$(rustup run stable rustc --version)" == "rustc 1.95.0"* ]]; then
    rustup toolchain link 1.95.0 "$sysroot"
  fi
fi

