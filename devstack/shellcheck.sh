#!/usr/bin/env bash
# `make lint`'s shell part: shellcheck over every shell script of the repository (the
# files git knows, or is about to, named *.sh or *.bash or starting with a sh/bash
# shebang), following what they source. Installs Debian's shellcheck if it is missing.
# shellcheck source-path=SCRIPTDIR # the sources below are named from this directory
set -euo pipefail

# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/apt.sh
source "$DEVSTACK_SRC/lib/apt.sh"

need_cmd shellcheck shellcheck
cd "$REPO_ROOT"

scripts=()
while IFS= read -r -d '' f; do
  [[ -f "$f" ]] || continue
  case $f in
  *.sh | *.bash) scripts+=("$f") ;;
  *) if head -n 1 "$f" | grep -Eq '^#!.*[/ ](ba)?sh([[:space:]]|$)'; then scripts+=("$f"); fi ;;
  esac
done < <(git ls-files -z --cached --others --exclude-standard)

log "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): ${#scripts[@]} scripts"
shellcheck --external-sources "${scripts[@]}"
