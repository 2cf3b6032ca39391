#!/usr/bin/env sh
# Print the path of a working Python VERSION (e.g. 3.9) interpreter, or exit 1.
# Looks in pyenv's versions first ($PYENV_ROOT, ~/.pyenv, /root/.pyenv: the newest VERSION.x there),
# then for pythonVERSION on PATH (pyenv shims are skipped: they fail unless the version is selected).
version=${1:?usage: find_python.sh VERSION}
for root in "${PYENV_ROOT:-}" "$HOME/.pyenv" /root/.pyenv; do
    [ -n "$root" ] && [ -d "$root/versions" ] || continue
    for dir in $(ls -d "$root/versions/$version".* 2>/dev/null | sort -t. -k3 -n -r); do
        candidate="$dir/bin/python$version"
        if [ -x "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$version'.split('.')))" 2>/dev/null; then
            echo "$candidate"
            exit 0
        fi
    done
done
candidate=$(command -v "python$version" 2>/dev/null) || exit 1
case "$candidate" in */shims/*) exit 1 ;; esac
"$candidate" -c "import sys" 2>/dev/null && echo "$candidate" && exit 0
exit 1
