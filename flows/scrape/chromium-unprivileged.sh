#!/bin/sh
# Chromium for a scraper that runs as root, with its sandbox on. Chromium refuses its sandbox as
# root (hence the usual --no-sandbox), so this drops to an unprivileged user first: no capabilities,
# no supplementary groups, HOME in the profile folder. The profile folder Playwright made (as root)
# is handed to that user. flows/scrape/browser.py launches this in place of Chromium when it runs
# as root; SIFT_CHROMIUM names the real binary, SIFT_BROWSER_USER the user (default nobody).
set -eu
user="${SIFT_BROWSER_USER:-nobody}"
home=/tmp
for arg in "$@"; do
  case "$arg" in
    --user-data-dir=*) home="${arg#--user-data-dir=}"; chown -R "$user" "$home" ;;
  esac
done
exec setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups --inh-caps=-all \
  env HOME="$home" XDG_CONFIG_HOME="$home" XDG_CACHE_HOME="$home" "$SIFT_CHROMIUM" "$@"
