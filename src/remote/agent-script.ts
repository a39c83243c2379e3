/**
 * The POSIX sh program vm-sync runs on a VM for everything that is not rsync:
 * probing the target, the lock, staging and publishing a release, pruning,
 * post_sync_command. It is a fixed text; values from the config reach it only
 * as positional arguments quoted by {@link agentCommand}, never spliced into
 * the script.
 *
 * Layout on the VM for a target T = P/N:
 *   P/N                                symlink -> .N.vm-sync/releases/<release>   (layout: atomic)
 *   P/.N.vm-sync/                      vm-sync's state directory: owned by the SSH user, never a symlink
 *   P/.N.vm-sync/releases/<UTC time>-<sha12>/   complete releases, each with .sync_rev
 *   P/.N.vm-sync/releases/<sha>.partial/        the release being staged (resumable)
 *   P/.N.vm-sync/lock                  symlink whose target is the holder's record (src/remote/lock.ts)
 *   P/.N.vm-sync/ops/<pgid>            the holder's running operations, so a later run can stop a dead one's
 *   P/.N.vm-sync/tmp/                  sentinels and links are written here, then renamed into place
 *   P/.N.vm-sync/previous-<time>       what stood at T before vm-sync managed it
 *
 * Every operation runs under `timeout` in a process group of its own, so the
 * end of a run's budget, or its cancellation, stops it on the VM too (closing
 * an SSH channel does not). Its output is framed: only lines that start with
 * `@<nonce> ` are read, so a login shell that prints to stdout cannot be taken
 * for the agent. A failure is `error=<code>` and `message=<text>` and exit 3;
 * the shell's own error text (disk full) is on stderr.
 */
export const AGENT_SCRIPT = `
set -u
umask 022
NONCE=$1 op=$2
shift 2
# Every line vm-sync parses starts with @NONCE: a login shell that prints to
# stdout (.bashrc, motd) cannot forge a response without knowing it.
out() {
  v=$(printf '%s' "$2" | tr '\\n\\r' '??')
  printf '@%s %s=%s\\n' "$NONCE" "$1" "$v"
}
fail() { # CODE MESSAGE
  out error "$1"
  out message "$2"
  printf 'vm-sync: %s\\n' "$2" >&2
  exit 3
}
flush() { sync -f "$1" 2>/dev/null || sync; }
expand() {
  # shellcheck disable=SC2088 # a literal "~/" prefix from the config, expanded here
  case $1 in
    "~/"*) printf '%s\\n' "$HOME/\${1#"~/"}" ;;
    *) printf '%s\\n' "$1" ;;
  esac
}
digits() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }
T=$(expand "$1")
shift
P=$(dirname -- "$T")
N=$(basename -- "$T")
S="$P/.$N.vm-sync"
R="$S/releases"
L="$S/lock"
LOCK_MAX=1000
hexof() { od -An -v -tx1 | tr -d ' \\n'; }
# What a lock says, as text (bounded) and as hex: vm-sync compares the hex,
# so a record holding any byte at all can still be matched exactly.
lock_text() {
  if [ -L "$L" ]; then readlink -- "$L" | head -c "$LOCK_MAX"
  elif [ -d "$L" ]; then head -c 200 -- "$L/owner" 2>/dev/null | head -n 1
  fi
}
# A step vm-sync already gave up on (its channel was cancelled before it ran)
# must not run now.
not_cancelled() {
  if [ -e "$S/tmp/cancelled.$NONCE" ]; then fail interrupted "this step was cancelled by its run before it started: nothing was changed"; fi
}

# vm-sync's own directories: never a symlink, always ours, never writable by
# others. A planted one would let another user steer what vm-sync writes or deletes.
own_dir() {
  d=$1
  if [ -L "$d" ]; then fail unsafe_state_dir "$d is a symlink: vm-sync refuses to use it. Remove it if you did not create it."; fi
  if [ ! -e "$d" ]; then
    mkdir -- "$d" 2>/dev/null || fail failed "cannot create $d: $(mkdir -- "$d" 2>&1)"
  fi
  [ -d "$d" ] || fail unsafe_state_dir "$d is not a directory: vm-sync refuses to use it. Move it away."
  [ -O "$d" ] || fail unsafe_state_dir "$d is not owned by $(id -un): vm-sync refuses to use it. Check who created it, then remove it."
  case $(ls -ld -- "$d") in
    d????w???? | d???????w?) chmod go-w -- "$d" || fail unsafe_state_dir "$d is writable by other users and cannot be fixed" ;;
  esac
}
state_dirs() {
  own_dir "$S"
  own_dir "$R"
  own_dir "$S/tmp"
  own_dir "$S/ops"
}
# The release the target's symlink points at, when vm-sync made that symlink.
current_release() {
  if [ -L "$T" ]; then
    link=$(readlink -- "$T")
    case $link in
      ".$N.vm-sync/releases/"*/* | *..*) ;;
      ".$N.vm-sync/releases/"?*) printf '%s\\n' "$P/$link" ;;
    esac
  fi
}
probe() {
  out target "$T"
  cur=$(current_release)
  if [ -L "$T" ]; then
    if [ -z "$cur" ]; then kind=symlink
    elif [ -d "$cur" ]; then kind=release
    else kind=dangling
    fi
  elif [ -d "$T" ]; then kind=dir
  elif [ -e "$T" ]; then kind=other
  else kind=absent
  fi
  out kind "$kind"
  out current "$cur"
  # The sentinel is read only where vm-sync put it, only as a regular file,
  # and only its first 100 bytes: a symlink, FIFO or device there is reported,
  # never followed or read.
  f="$T/.sync_rev"
  if [ "$kind" = symlink ] || [ "$kind" = other ] || [ "$kind" = dangling ]; then state=absent
  elif [ -L "$f" ]; then state=symlink
  elif [ ! -e "$f" ]; then state=absent
  elif [ -d "$f" ]; then state=directory
  elif [ ! -f "$f" ]; then state=special
  elif [ ! -r "$f" ]; then state=unreadable
  else state=regular
  fi
  out rev_state "$state"
  revval=
  if [ "$state" = regular ]; then revval=$(head -c 100 -- "$f" | head -n 1); out rev "$revval"; fi
  out rsync "$(rsync --version 2>/dev/null </dev/null | head -n 1)"
  if [ -L "$L" ] || [ -e "$L" ]; then
    lt=$(lock_text)
    out lock_record "$lt"
    out lock_hex "$(printf '%s' "$lt" | hexof)"
    if [ -L "$L" ]; then out lock_kind v2; elif [ -d "$L" ]; then out lock_kind legacy; else out lock_kind other; fi
  fi
  if [ -e "$L" ] || [ -L "$L" ]; then out lock_mtime "$(stat -c %Y -- "$L" 2>/dev/null)"; fi
  out now "$(date +%s)"
}
field() { # TEXT KEY: the value of key=value in a space-separated lock record
  case " $1 " in
    *" $2="*) v=\${1##*" $2="}; printf '%s\\n' "\${v%% *}" ;;
  esac
}
# Moves the lock away if it is still exactly what the caller saw (a lock
# released and taken again meanwhile is left alone). EXPECTED is hex.
break_lock() { # EXPECTED_HEX
  [ -L "$L" ] || [ -e "$L" ] || return 1
  seen=$(lock_text)
  [ "$(printf '%s' "$seen" | hexof)" = "$1" ] || return 1
  away="$S/tmp/broken.$$"
  rm -rf -- "$away"
  mv -- "$L" "$away" 2>/dev/null || return 1
  if [ -L "$away" ]; then again=$(readlink -- "$away" | head -c "$LOCK_MAX"); else again=$(head -c 200 -- "$away/owner" 2>/dev/null | head -n 1); fi
  if [ "$again" != "$seen" ]; then
    # Raced with a fresh lock: put it back unless yet another one exists.
    [ -e "$L" ] || [ -L "$L" ] || mv -- "$away" "$L" 2>/dev/null
    return 1
  fi
  rm -rf -- "$away"
  kill_ops "$(field "$seen" token)"
  return 0
}
# Kills the process groups of a dead or evicted holder's operations.
kill_ops() { # TOKEN
  for rec in "$S/ops"/*; do
    [ -f "$rec" ] || continue
    pg=\${rec##*/}
    digits "$pg" || { rm -f -- "$rec"; continue; }
    holder=$(head -c 200 -- "$rec")
    alive=0
    [ "$(cat "/proc/$pg/comm" 2>/dev/null)" = timeout ] && alive=1
    if [ "$alive" = 1 ] && [ -n "$1" ] && [ "$holder" = "$1" ]; then
      kill -KILL "-$pg" 2>/dev/null && out killed_pgid "$pg"
      rm -f -- "$rec"
    elif [ "$alive" = 0 ]; then
      rm -f -- "$rec"
    fi
  done
}
# Every operation that changes the VM runs only while this run holds the lock,
# and records its process group so a later run can stop it if this one died.
require_lock() { # TOKEN
  not_cancelled
  case " $(readlink -- "$L" 2>/dev/null | head -c "$LOCK_MAX") " in
    *" token=$1 "*) ;;
    *) fail lock_lost "this run no longer holds the lock $L (another run broke it): nothing was changed by this step" ;;
  esac
  printf '%s\\n' "$1" > "$S/ops/$PPID" 2>/dev/null || true
  trap 'rm -f -- "$S/ops/$PPID"' EXIT
}

case $op in
probe)
  probe
  ;;
begin)
  owner=$1 budget=$2 expect=$3 force=$4 grace=$5 legacy_after=$6 expected_break=$7
  digits "$budget" || fail failed "bad budget"
  state_dirs
  not_cancelled
  find "$S/tmp" -maxdepth 1 -name 'cancelled.*' -mmin +60 -exec rm -f -- {} + 2>/dev/null
  now=$(date +%s)
  if [ -n "$expected_break" ]; then
    break_lock "$expected_break" && out took_over "$seen"
  fi
  # The deadline comes first: a record is read back whole, but never past LOCK_MAX.
  record="vm-sync-lock-v2 deadline=$((now + budget)) \${owner#vm-sync-lock-v2 }"
  if ! err=$(ln -s -T -- "$record" "$L" 2>&1); then
    if [ ! -L "$L" ] && [ ! -e "$L" ]; then fail failed "cannot create the lock $L: $err"; fi
    stale=0
    held=$(lock_text)
    if [ -L "$L" ]; then
      deadline=$(field "$held" deadline)
      if digits "$deadline"; then [ "$now" -gt "$deadline" ] && stale=1; why=deadline
      else why=unreadable
      fi
    elif [ -d "$L" ]; then
      started=\${held##* }
      if [ "$held" != "$started" ] && digits "$started"; then
        # A lock of vm-sync before 0.2 ("token epoch"): it has no deadline of its own.
        [ $((now - started)) -gt "$legacy_after" ] && stale=1; why=legacy
      else why=unreadable
      fi
    else
      why=unreadable
    fi
    mtime=$(stat -c %Y -- "$L" 2>/dev/null)
    digits "$mtime" || mtime=$now
    age=$((now - mtime))
    if [ "$why" = unreadable ] && [ "$age" -gt "$grace" ]; then stale=1; fi
    if [ "$stale" = 1 ] && break_lock "$(printf '%s' "$held" | hexof)" && ln -s -T -- "$record" "$L" 2>/dev/null; then
      out took_over "$held"
      out took_over_why "$why"
    else
      out lock held
      out lock_why "$why"
      out owner "$held"
      out owner_hex "$(printf '%s' "$held" | hexof)"
      out age "$age"
      probe
      out end ok
      exit 0
    fi
  fi
  out lock acquired
  kill_ops ''
  probe
  # Already on the commit: decided under the lock, from what the probe read
  # (only a regular sentinel in vm-sync's release or a plain directory), and
  # released at once.
  if [ "$force" = 0 ] && [ "$state" = regular ] && { [ "$kind" = release ] || [ "$kind" = dir ]; } && [ "$revval" = "$expect" ]; then
    rm -f -- "$L"
    out lock released
  fi
  ;;
unlock)
  token=$1
  case " $(readlink -- "$L" 2>/dev/null | head -c "$LOCK_MAX") " in
    *" token=$token "*) rm -f -- "$L"; out lock released ;;
    *) out lock not-ours ;;
  esac
  ;;
break)
  state_dirs
  if break_lock "$1"; then out lock broken; else out lock changed; fi
  ;;
stage)
  token=$1 sha=$2
  require_lock "$token"
  # A half-staged release of another commit is abandoned: free its space
  # before staging. This commit's own partial is kept: rsync resumes it.
  for p in "$R"/*.partial; do
    if [ ! -d "$p" ] || [ -L "$p" ]; then continue; fi
    [ "$p" = "$R/$sha.partial" ] && continue
    rm -rf -- "$p" && out removed_partial "\${p##*/}"
  done
  stage="$R/$sha.partial"
  if [ -L "$stage" ]; then rm -f -- "$stage"; fi
  [ -d "$stage" ] || mkdir -- "$stage" || fail failed "cannot create $stage"
  out stage "$stage"
  cur=$(current_release)
  if [ -n "$cur" ] && [ -d "$cur" ]; then out link_dest "$cur"
  elif [ ! -L "$T" ] && [ -d "$T" ]; then out link_dest "$T"
  else out link_dest ''
  fi
  ;;
publish)
  token=$1 sha=$2
  require_lock "$token"
  stage="$R/$sha.partial"
  if [ ! -d "$stage" ] || [ -L "$stage" ]; then fail failed "staged release $stage is missing"; fi
  # .sync_rev at a release's root is vm-sync's: whatever stands there goes,
  # and the sentinel is written in vm-sync's own directory, then renamed in
  # (rename replaces a symlink; it never writes through one).
  rm -rf -- "$stage/.sync_rev"
  tmp="$S/tmp/sync_rev.$$"
  rm -rf -- "$tmp"
  printf '%s\\n' "$sha" > "$tmp" || fail failed "cannot write $tmp"
  mv -f -- "$tmp" "$stage/.sync_rev" || fail failed "cannot write .sync_rev"
  flush "$stage"
  name="$(date -u +%Y%m%dT%H%M%SZ)-$(printf '%s' "$sha" | cut -c1-12)"
  [ ! -e "$R/$name" ] || name="$name-$$"
  mv -- "$stage" "$R/$name" || fail failed "cannot rename $stage"
  if [ -z "$(current_release)" ] && { [ -e "$T" ] || [ -L "$T" ]; }; then
    # First atomic deploy over something vm-sync did not create: keep it.
    previous="$S/previous-$(date -u +%Y%m%dT%H%M%SZ)"
    mv -- "$T" "$previous" || fail failed "cannot move $T aside"
    out moved_aside "$previous"
  fi
  link="$S/tmp/link.$$"
  rm -f -- "$link"
  ln -s -- ".$N.vm-sync/releases/$name" "$link" || fail failed "cannot create symlink"
  mv -f -T -- "$link" "$T" || { rm -f -- "$link"; fail failed "cannot flip $T"; }
  flush "$P"
  out release "$R/$name"
  ;;
inplace-begin)
  token=$1
  require_lock "$token"
  [ ! -L "$T" ] || fail failed "$T is a symlink (atomic layout): switch layout back to atomic or remove it"
  [ -d "$T" ] || mkdir -- "$T" || fail failed "cannot create $T"
  # A tree that is being rewritten must not claim any commit.
  rm -rf -- "$T/.sync_rev" || fail failed "cannot remove $T/.sync_rev"
  out target "$T"
  ;;
inplace-finish)
  token=$1 sha=$2
  require_lock "$token"
  rm -rf -- "$T/.sync_rev"
  tmp="$S/tmp/sync_rev.$$"
  rm -rf -- "$tmp"
  printf '%s\\n' "$sha" > "$tmp" || fail failed "cannot write $tmp"
  flush "$tmp"
  mv -f -- "$tmp" "$T/.sync_rev" || fail failed "cannot write .sync_rev"
  flush "$T"
  out rev "$sha"
  ;;
prune)
  token=$1 keep=$2
  require_lock "$token"
  digits "$keep" || fail failed "bad keep"
  cur=$(current_release)
  cur=\${cur##*/}
  for p in "$R"/*.partial; do
    [ -d "$p" ] && [ ! -L "$p" ] && rm -rf -- "$p" && out pruned "\${p##*/}"
  done
  for d in "$R"/*; do
    [ -d "$d" ] && [ ! -L "$d" ] && printf '%s\\n' "\${d##*/}"
  done | sort -r | tail -n +"$((keep + 1))" | while IFS= read -r name; do
    [ "$name" = "$cur" ] && continue
    rm -rf -- "\${R:?}/$name" && out pruned "$name"
  done
  ;;
post)
  token=$1 sha=$2 cmd=$3
  require_lock "$token"
  cd -- "$T" || fail failed "cannot enter $T"
  VM_SYNC_COMMIT=$sha VM_SYNC_TARGET=$T sh -c "$cmd" </dev/null
  status=$?
  [ "$status" = 0 ] || { out exit "$status"; out end failed; exit "$status"; }
  ;;
kill)
  # Stops this run's own steps that outlived their channel (a cancelled run),
  # found by the nonce on their command line; a step that has not started
  # yet finds the marker and refuses to run.
  [ -d "$S/tmp" ] && [ ! -L "$S/tmp" ] && [ -O "$S/tmp" ] || S=
  groups=
  for nonce in "$@"; do
    case $nonce in '' | *[!0-9a-f]*) continue ;; esac
    [ -n "$S" ] && : > "$S/tmp/cancelled.$nonce"
  done
  # One pass over the processes, reading comm without a fork (a busy host has
  # hundreds): only \`timeout\` processes are looked at closer.
  for d in /proc/[0-9]*; do
    # Our own \`timeout\` carries these nonces as arguments too.
    [ "\${d#/proc/}" = "$PPID" ] && continue
    comm=
    read -r comm 2>/dev/null < "$d/comm" || continue
    [ "$comm" = timeout ] || continue
    args=$(tr '\\000' '\\n' < "$d/cmdline" 2>/dev/null)
    for nonce in "$@"; do
      case "
$args
" in *"
$nonce
"*) groups="$groups \${d#/proc/}"; break ;; esac
    done
  done
  for pg in $groups; do kill -TERM "-$pg" 2>/dev/null; done
  i=0
  while [ "$i" -lt 30 ]; do
    left=0
    for pg in $groups; do kill -0 "-$pg" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1 2>/dev/null || sleep 1
    i=$((i + 1))
  done
  for pg in $groups; do
    kill -0 "-$pg" 2>/dev/null && kill -KILL "-$pg" 2>/dev/null
    out stopped "$pg"
  done
  ;;
doctor)
  # Can a deploy create its state directory and flip the target here?
  d=$P
  while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done
  out parent "$P"
  out existing "$d"
  if [ -d "$d" ] && [ -w "$d" ]; then out writable 1; else out writable 0; fi
  out avail_kb "$(df -Pk -- "$d" 2>/dev/null | awk 'NR == 2 { print $4 }')"
  out timeout "$(command -v timeout)"
  ;;
*)
  fail failed "unknown operation $op"
  ;;
esac
out end ok
`;

/** Quotes one word for a POSIX shell: the only way config values reach a VM's shell. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Seconds `timeout` waits after its TERM before it sends KILL to the operation's process group. */
export const KILL_GRACE_S = 3;

/**
 * The command line that runs one agent operation under a deadline on the VM:
 * `timeout -k 3 BUDGET sh -c SCRIPT vm-sync NONCE OP TARGET ARGS...`.
 */
export function agentCommand(op: string, target: string, options: { nonce: string; budgetS: number }, ...args: string[]): string {
  const budget = String(Math.max(1, Math.ceil(options.budgetS)));
  return ['timeout', '-k', String(KILL_GRACE_S), budget, 'sh', '-c', AGENT_SCRIPT, 'vm-sync', options.nonce, op, target, ...args].map(shellQuote).join(' ');
}

/** What one agent operation answered: its framed `key=value` lines, in order, with repeated keys kept. */
export class AgentResponse {
  constructor(private readonly values: Map<string, string[]>) {}

  /** Whether the operation ran to its end marker (a killed one did not). */
  get complete(): boolean {
    return this.values.has('end');
  }

  /** The first value of a key, or null. */
  get(key: string): string | null {
    return this.values.get(key)?.[0] ?? null;
  }

  /** Every value of a key (`pruned=` lines). */
  all(key: string): string[] {
    return this.values.get(key) ?? [];
  }

  /** The value of a key the operation must have printed; a missing one is a protocol error, never ''. */
  require(key: string): string {
    const value = this.get(key);
    if (value === null) throw new Error(`agent response lacks ${key}=`);
    return value;
  }

  /** A key whose value must be one of `allowed`. */
  oneOf<T extends string>(key: string, allowed: readonly T[]): T {
    const value = this.require(key);
    if (!(allowed as readonly string[]).includes(value)) throw new Error(`agent response has ${key}=${JSON.stringify(value.slice(0, 40))}, expected one of ${allowed.join(', ')}`);
    return value as T;
  }
}

/** Lines longer than this are cut: no framed value of ours is anywhere near it. */
const MAX_LINE = 8192;
/** More framed lines than this is not an answer of ours. */
const MAX_LINES = 2000;

/**
 * Reads the framed lines of an operation's stdout. Lines without the
 * operation's nonce (a chatty login shell, post_sync_command output) are
 * ignored here; the caller keeps a bounded copy of them for messages.
 */
export function parseAgentOutput(stdout: string, nonce: string): AgentResponse {
  const prefix = `@${nonce} `;
  const values = new Map<string, string[]>();
  let count = 0;
  for (const raw of stdout.split('\n')) {
    if (!raw.startsWith(prefix) || ++count > MAX_LINES) continue;
    const line = raw.slice(prefix.length, MAX_LINE);
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq);
    values.set(key, [...(values.get(key) ?? []), line.slice(eq + 1)]);
  }
  return new AgentResponse(values);
}
