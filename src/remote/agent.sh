#!/bin/sh
# vm-sync's agent: the POSIX sh program it runs on a VM for everything that is
# not rsync. It is a fixed text (embedded in the bundle by
# scripts/embed-agent.mjs); values from the config reach it only as positional
# arguments, never spliced into it.
#
#   sh -c AGENT vm-sync NONCE OP TARGET ARG...    one operation
#   sh -c AGENT vm-sync NONCE serve TARGET AGENT  a session: operations read from stdin
#
# Layout on the VM for a target T = P/N:
#   P/N                             symlink -> .N.vm-sync/releases/<release>   (layout: atomic)
#   P/.N.vm-sync/                   vm-sync's state directory: owned by the SSH user, never a symlink
#   P/.N.vm-sync/releases/<name>/   releases, named <UTC time>-<sha12>; each has .sync_rev
#   P/.N.vm-sync/releases/<sha>.partial/   the release being staged (resumable)
#   P/.N.vm-sync/complete/<name>    completion marker of a release (holds its commit)
#   P/.N.vm-sync/manifests/<name>   what the release held when sealed (type, mode, size, mtime, inode, path of every entry)
#   P/.N.vm-sync/shared/<path>      shared paths; each release links to them
#   P/.N.vm-sync/lock               symlink whose target is the holder's record (src/remote/lock.ts)
#   P/.N.vm-sync/ops/<pgid>         the holder's running operations, so a later run can stop a dead one's
#   P/.N.vm-sync/tmp/               sentinels and links are written here, then renamed into place
#   P/.N.vm-sync/previous-<time>    what stood at T before vm-sync managed it
#   P/.N.vm-sync/revisions.log      one line per flip, revert or rollback (the last 1000; see revlog)
#
# Every operation runs under `timeout` in a process group of its own, so the
# end of a run's budget, or its cancellation, stops it on the VM too (closing
# an SSH channel does not). Its output is framed: only lines that start with
# `@<nonce> ` are read, so a login shell that prints to stdout cannot be taken
# for the agent. A failure is `error=<code>` and `message=<text>` and exit 3;
# the shell's own error text (disk full) is on stderr.
set -u
umask 022
# The VM's environment must not change what tar and gzip do with a release
# (TAR_OPTIONS=--overwrite would write through a hard link into the live
# release; --keep-directory-symlink would follow a symlink out of it).
unset TAR_OPTIONS GZIP
NONCE=$1 op=$2
shift 2
# Every line vm-sync parses starts with @NONCE: a login shell that prints to
# stdout (.bashrc, motd) cannot forge a response without knowing it.
NL='
'
# Set by gnu_tools, never taken from the VM's environment.
gnu_ok=
out() {
  # tr only for a value that needs it (one with a control character: tr
  # changes only \n and \r): a fork per answer line adds up over a fleet.
  case $2 in
    # The newline on its own: a shell without character classes (mksh, posh)
    # reads the class as a plain bracket and would let it through.
    *"$NL"* | *[[:cntrl:]]*) v=$(printf '%s' "$2" | tr '\n\r' '??') ;;
    *) v=$2 ;;
  esac
  printf '@%s %s=%s\n' "$NONCE" "$1" "$v"
}
fail() { # CODE MESSAGE
  out error "$1"
  out message "$2"
  printf 'vm-sync: %s\n' "$2" >&2
  exit 3
}
flush() { sync -f "$1" 2>/dev/null || sync; }
# Sets T: the target with a leading "~/" expanded (in this shell: every step
# starts with it, and a subshell per step adds up over a fleet).
expand_target() {
  # shellcheck disable=SC2088 # a literal "~/" prefix from the config, expanded here
  case $1 in
    "~/"*)
      [ -n "${HOME:-}" ] || fail failed "the target $1 starts with ~/ and HOME is not set on this VM: give an absolute path"
      T="$HOME/${1#"~/"}" ;;
    *) T=$1 ;;
  esac
}
digits() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }
TARGET_ARG=$1
expand_target "$1"
shift
# dirname and basename by parameter expansion (two programs fewer on every step).
while :; do case $T in ?*/) T=${T%/} ;; *) break ;; esac; done
case $T in
  */*) P=${T%/*}; [ -n "$P" ] || P=/ ;;
  *) P=. ;;
esac
# As dirname: no trailing slash on the parent (a $HOME of "/home/u/" makes T "/home/u//app").
while :; do case $P in ?*/) P=${P%/} ;; *) break ;; esac; done
N=${T##*/}
S="$P/.$N.vm-sync"
R="$S/releases"
C="$S/complete"
RJ="$S/rejected"
SH="$S/shared"
L="$S/lock"
LOCK_MAX=1000
hexof() { od -An -v -tx1 | tr -d ' \n'; }
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
  own_dir_entry "$1"
  no_other_writers "$1"
}
# The checks a shell builtin can make: no symlink, made if absent, a directory, ours.
own_dir_entry() {
  d=$1
  if [ -L "$d" ]; then fail unsafe_state_dir "$d is a symlink: vm-sync refuses to use it. Remove it if you did not create it."; fi
  if [ ! -e "$d" ]; then
    mkdir -- "$d" 2>/dev/null || fail failed "cannot create $d: $(mkdir -- "$d" 2>&1)"
  fi
  [ -d "$d" ] || fail unsafe_state_dir "$d is not a directory: vm-sync refuses to use it. Move it away."
  [ -O "$d" ] || fail unsafe_state_dir "$d is not owned by $(id -un): vm-sync refuses to use it. Check who created it, then remove it."
}
no_other_writers() {
  # The mode is the first word of the line (a trailing . or + marks an SELinux context or an ACL).
  case $(ls -ld -- "$1") in
    d????w????* | d???????w?*) chmod go-w -- "$1" || fail unsafe_state_dir "$1 is writable by other users and cannot be fixed" ;;
  esac
}
state_dirs() {
  # The function's own positional parameters: the seven directories, listed once.
  set -- "$S" "$R" "$C" "$RJ" "$S/tmp" "$S/ops" "$S/manifests"
  for d in "$@"; do own_dir_entry "$d"; done
  # Writable by group or others: one find for all seven (every step runs this), the fix one by one.
  # It prints at most seven names: no head.
  if [ -n "$(find "$@" -prune \( -perm -020 -o -perm -002 \) -print 2>/dev/null)" ]; then
    for d in "$@"; do no_other_writers "$d"; done
  fi
}
# A release is complete when $C/<name> (its completion marker, holding the
# commit) exists. Releases made before markers existed were renamed into
# place only once complete: one whose name and .sync_rev agree is adopted.
adopt_legacy() {
  set +f
  for d in "$R"/*; do
    if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
    name=${d##*/}
    if [ -e "$C/$name" ] || [ -L "$C/$name" ]; then continue; fi
    case $name in *.partial) continue ;; esac
    if [ ! -f "$d/.sync_rev" ] || [ -L "$d/.sync_rev" ]; then continue; fi
    sha=$(head -c 100 -- "$d/.sync_rev" | head -n 1)
    case $sha in *[!0-9a-f]*) continue ;; esac
    [ "${#sha}" = 40 ] || continue
    case $name in ????????T??????Z-"$(printf '%s' "$sha" | cut -c1-12)"*) printf '%s\n' "$sha" > "$C/$name" ;; esac
  done
}
# The commit a release's completion marker holds, or - when it holds none.
marker_commit() { # NAME
  mc=-
  if [ -n "$1" ] && [ -f "$C/$1" ] && [ ! -L "$C/$1" ]; then
    first_line "$C/$1"
    mc=$fl
    case $mc in *[!0-9a-f]* | '') mc=- ;; esac
    [ "${#mc}" = 40 ] || mc=-
  fi
  printf '%s' "$mc"
}
# The VM's own record of what changed it: one line per flip, revert or
# rollback, appended after the change (a failed write never undoes it):
#   vm-sync-rev-1 TIME ACTION FROM TO RUN RELEASE
# TIME is UTC (ISO 8601), FROM and TO are commits (- when unknown), RUN is
# the run id vm-sync journals on the runner host, RELEASE the release made
# live (- in place). Bounded: past 2000 lines the last 1000 are kept.
revlog() { # ACTION FROM TO RUN RELEASE
  rl="$S/revisions.log"
  if [ -L "$rl" ]; then rm -f -- "$rl"; fi
  if [ -e "$rl" ] && [ ! -f "$rl" ]; then return 0; fi
  rr=$4
  case $rr in '' | *[!A-Za-z0-9._:-]*) rr=- ;; esac
  [ "${#rr}" -le 64 ] || rr=-
  printf 'vm-sync-rev-1 %s %s %s %s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$3" "$rr" "${5:--}" >> "$rl" 2>/dev/null || return 0
  if [ "$(wc -l < "$rl")" -gt 2000 ]; then
    keep=$(mktemp "$S/tmp/revisions.XXXXXX") && tail -n 1000 -- "$rl" > "$keep" && mv -f -- "$keep" "$rl"
  fi
  return 0
}
# The release a rollback goes to from LIVE: the last one live before it, from
# the flip history, that is still complete and was not rejected (rolled back
# from, or reverted as unhealthy); without such history (releases of an older
# vm-sync), the newest complete one older than LIVE by name.
previous_of() { # LIVE
  found=''
  if [ -f "$S/history" ] && [ ! -L "$S/history" ]; then
    found=$(tac -- "$S/history" | while IFS= read -r name; do
      case $name in '' | */* | .*) continue ;; esac
      [ "$name" = "$1" ] && continue
      if [ -f "$C/$name" ] && [ ! -e "$RJ/$name" ] && [ -d "$R/$name" ] && [ ! -L "$R/$name" ]; then printf '%s\n' "$name"; break; fi
    done)
  fi
  if [ -z "$found" ] && [ -n "$1" ]; then
    found=$(for d in "$R"/*; do
      name=${d##*/}
      if [ -d "$d" ] && [ ! -L "$d" ] && [ -f "$C/$name" ] && [ ! -e "$RJ/$name" ]; then printf '%s\n' "$name"; fi
    done | sort -r | {
      # Newest first: the first one that sorts after LIVE is older than it.
      after=0
      while IFS= read -r name; do
        if [ "$after" = 1 ]; then printf '%s\n' "$name"; break; fi
        [ "$name" = "$1" ] && after=1
      done
    })
  fi
  printf '%s\n' "$found"
}
# Walks REL's parent directories under BASE, refusing a symlink among them
# (returns 1). With create, a missing one is made and a non-directory
# refused: a symlink committed in the tree, or planted in shared/ by the
# application, must not steer where vm-sync creates or links anything.
# Without it nothing is made and the walk stops at the first missing one:
# removing BASE/REL then cannot reach outside BASE.
parents_ok() { # BASE REL create|check
  case $2 in */*) ;; *) return 0 ;; esac
  cur=$1 how=$3
  old_ifs=$IFS
  IFS=/
  set -f
  # shellcheck disable=SC2086 # split on / on purpose, globbing is off
  set -- ${2%/*}
  set +f
  IFS=$old_ifs
  for c in "$@"; do
    cur="$cur/$c"
    [ -L "$cur" ] && return 1
    if [ ! -e "$cur" ]; then
      [ "$how" = create ] || return 0
      mkdir -- "$cur" || return 1
    fi
    if [ ! -d "$cur" ]; then
      [ "$how" = create ] && return 1
      return 0
    fi
  done
  return 0
}
safe_parent() { parents_ok "$1" "$2" create; }
no_link_parent() { parents_ok "$1" "$2" check; }
# GNU find and tar: the stat listing and the stream need them.
# Asked once per step (two programs, not six: every step that stages asks).
gnu_tools() {
  if [ -z "$gnu_ok" ]; then
    gnu_ok=0
    # shellcheck disable=SC2185 # --version takes no path
    gv=$(find --version 2>/dev/null)
    case ${gv%%"$NL"*} in
      *GNU*)
        gv=$(tar --version 2>/dev/null)
        case ${gv%%"$NL"*} in *'GNU tar'*) gnu_ok=1 ;; esac ;;
    esac
  fi
  [ "$gnu_ok" = 1 ]
}
# A zstd that runs (not merely one on PATH).
has_zstd() { zstd -q -V >/dev/null 2>&1; }
# Sets fl to the first line of FILE, a record vm-sync wrote in its own state
# directory (no other user can write there: see own_dir), by the shell's own
# read: two programs and a subshell fewer than head | head, on every step.
first_line() { # FILE
  fl=
  IFS= read -r fl 2>/dev/null < "$1" || :
}
# A release's entries as a sorted NUL-separated stat listing (no content is
# read): what a release held when sealed, compared before it is hard-link
# copied. Any change by hand (content, mode, a new or removed file, a
# directory swapped for a symlink) changes size, mtime, inode or type.
stat_list() { # DIR
  find "$1" -mindepth 1 -printf '%y %m %s %T@ %i %P\0' | LC_ALL=C sort -z
}
# Whether release NAME still is exactly what vm-sync sealed.
intact() { # NAME
  m="$S/manifests/$1"
  [ -f "$m" ] && [ ! -L "$m" ] && [ -d "$R/$1" ] && [ ! -L "$R/$1" ] || return 1
  stat_list "$R/$1" | cmp -s - "$m"
}
# The release the target's symlink points at, when vm-sync made that symlink.
current_release() {
  if [ -L "$T" ]; then
    link=$(readlink -- "$T")
    case $link in
      ".$N.vm-sync/releases/"*/* | *..*) ;;
      ".$N.vm-sync/releases/"?*) printf '%s\n' "$P/$link" ;;
    esac
  fi
}
# A half-staged release of another commit is abandoned: free its space
# before staging. This commit's own partial is kept: rsync resumes it.
drop_partials() { # SHA
  for p in "$R"/*.partial; do
    if [ ! -d "$p" ] || [ -L "$p" ]; then continue; fi
    [ "$p" = "$R/$1.partial" ] && continue
    rm -rf -- "$p" && out removed_partial "${p##*/}"
  done
  for m in "$S/tmp"/linked.*; do
    [ "$m" = "$S/tmp/linked.$1" ] || rm -f -- "$m"
  done
}
# The record `link` leaves for `apply`: "TOKEN BASE" of the run that made
# this commit's partial release as a hard-link copy of BASE. In vm-sync's
# own tmp directory (nobody else writes there); one line, bounded.
linked_by() { # SHA
  m="$S/tmp/linked.$1"
  if [ -f "$m" ] && [ ! -L "$m" ]; then first_line "$m"; printf '%s\n' "$fl"; fi
}
# What staging needs to know, read-only: where rsync hard-links from, a
# complete release of SHA kept from an earlier run, the GNU tools and zstd the
# stream transfer needs, the live release as a stream base, and which of the
# shared paths (the other arguments) exist. begin answers it under the lock
# while the run's secret scan still runs; stage answers it again.
survey() { # SHA SHARED...
  want=$1
  shift
  live=$(current_release)
  if [ -n "$live" ] && [ -d "$live" ]; then out link_dest "$live"
  elif [ ! -L "$T" ] && [ -d "$T" ]; then out link_dest "$T"
  else out link_dest ''
  fi
  # A complete release of this commit that was staged before (a rollout
  # that stopped, a revert): the caller may flip to it without a transfer.
  # Never the live release (the VM serves it and does not claim the commit:
  # it was changed), only one whose sentinel still names the commit, and one
  # that links every shared path configured now (they may have changed).
  reuse=$(for m in "$C"/*; do
    if [ ! -f "$m" ] || [ -L "$m" ]; then continue; fi
    first_line "$m"
    [ "$fl" = "$want" ] || continue
    d="$R/${m##*/}"
    if [ ! -d "$d" ] || [ -L "$d" ] || [ "$d" = "$live" ]; then continue; fi
    if [ ! -f "$d/.sync_rev" ] || [ -L "$d/.sync_rev" ] || [ "$(head -c 100 -- "$d/.sync_rev" | head -n 1)" != "$want" ]; then continue; fi
    ok=1
    for rel in "$@"; do
      if [ ! -L "$d/$rel" ] || [ "$(readlink -- "$d/$rel")" != "$SH/$rel" ]; then ok=0; fi
    done
    if [ "$ok" = 1 ]; then printf '%s\n' "${m##*/}"; fi
  done | sort -r | head -n 1)
  out complete "$reuse"
  # Whether the stream transfer can build on the live release: GNU tools, and
  # the live release unchanged since it was sealed (else rsync repairs it).
  if gnu_tools; then out stream 1; else out stream 0; fi
  # zstd unpacks a stream about four times faster than gzip (CPU a busy VM keeps).
  if has_zstd; then out zstd 1; else out zstd 0; fi
  if [ -n "$live" ] && [ -f "$C/${live##*/}" ] && [ ! -L "$C/${live##*/}" ]; then
    # The second line of the marker (the first is the commit).
    bk=
    { IFS= read -r bk; bk=; IFS= read -r bk || :; } 2>/dev/null < "$C/${live##*/}"
    [ "${#bk}" -le 100 ] || bk=
    out base_key "${bk#key=}"
  fi
  if [ -z "$live" ]; then out base_state none
  elif [ ! -f "$S/manifests/${live##*/}" ]; then out base_state unknown
  elif gnu_tools && intact "${live##*/}"; then out base_state intact
  else out base_state drifted
  fi
  # Shared paths that already exist are excluded from the transfer; the
  # others are transferred once, to seed them.
  for rel in "$@"; do
    if [ -e "$SH/$rel" ] || [ -L "$SH/$rel" ]; then out shared "$rel"; fi
  done
}
probe() {
  out target "$T"
  cur=$(current_release)
  if [ -L "$T" ]; then
    # A symlink whose target is gone serves nothing, whoever made it: dangling.
    if [ -z "$cur" ]; then
      if [ -e "$T" ]; then kind=symlink; else kind=dangling; fi
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
  # Its first line, cut here (a program fewer on every probe).
  rv=$(rsync --version 2>/dev/null </dev/null)
  out rsync "${rv%%"$NL"*}"
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
    *" $2="*) v=${1##*" $2="}; printf '%s\n' "${v%% *}" ;;
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
    pg=${rec##*/}
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
  # The whole record (a symlink's target is bounded by the system, PATH_MAX):
  # no head, on every step that changes the VM.
  case " $(readlink -- "$L" 2>/dev/null) " in
    *" token=$1 "*) ;;
    *) fail lock_lost "this run no longer holds the lock $L (another run broke it): nothing was changed by this step" ;;
  esac
  printf '%s\n' "$1" > "$S/ops/$PPID" 2>/dev/null || true
  trap 'rm -f -- "$S/ops/$PPID"' EXIT
}

# What `listing` needs: GNU find (-printf), and sha256sum, head and gzip that
# take NUL-separated names (GNU coreutils).
listing_tools() {
  # shellcheck disable=SC2185 # --version takes no path
  find --version 2>/dev/null | head -n 1 | grep -q GNU && printf '' | sha256sum -z >/dev/null 2>&1 && printf 'x' | head -c 1 >/dev/null 2>&1 && gzip -c </dev/null >/dev/null 2>&1
}

case $op in
probe)
  probe
  ;;
begin)
  owner=$1 budget=$2 expect=$3 force=$4 grace=$5 legacy_after=$6 expected_break=$7 survey=${8:-0}
  # The rest: the shared paths, for the survey.
  if [ "$#" -ge 8 ]; then shift 8; else set --; fi
  digits "$budget" || fail failed "bad budget"
  state_dirs
  not_cancelled
  # Old cancellation marks go (a find only when there is one).
  set +f
  for m in "$S/tmp"/cancelled.*; do
    if [ -e "$m" ]; then find "$S/tmp" -maxdepth 1 -name 'cancelled.*' -mmin +60 -exec rm -f -- {} + 2>/dev/null; fi
    break
  done
  now=$(date +%s)
  if [ -n "$expected_break" ]; then
    break_lock "$expected_break" && out took_over "$seen"
  fi
  # The deadline comes first: a record is read back whole, but never past LOCK_MAX.
  record="vm-sync-lock-v2 deadline=$((now + budget)) ${owner#vm-sync-lock-v2 }"
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
      started=${held##* }
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
  adopt_legacy
  kill_ops ''
  probe
  # Already on the commit: decided under the lock, from what the probe read
  # (only a regular sentinel in vm-sync's release or a plain directory), and
  # released at once.
  if [ "$force" = 0 ] && [ "$state" = regular ] && { [ "$kind" = release ] || [ "$kind" = dir ]; } && [ "$revval" = "$expect" ]; then
    rm -f -- "$L"
    out lock released
  elif [ "$survey" = 1 ]; then
    # Read-only, under the lock: what staging will need, found out while
    # the run's secret scan still runs (nothing is staged before it passed).
    survey "$expect" "$@"
  fi
  ;;
unlock)
  token=$1
  case " $(readlink -- "$L" 2>/dev/null) " in
    *" token=$token "*)
      # A partial release this run linked but never built on (the scan
      # blocked, the VM failed first) goes with the lock: the VM is left as
      # it was found.
      for m in "$S/tmp"/linked.*; do
        if [ ! -f "$m" ] || [ -L "$m" ]; then continue; fi
        first_line "$m"
        [ "${fl%% *}" = "$token" ] || continue
        sha=${m##*/linked.}
        case $sha in *[!0-9a-f]* | '') continue ;; esac
        rm -rf -- "${R:?}/$sha.partial" && rm -f -- "$m" && out discarded_partial "$sha.partial"
      done
      rm -f -- "$L"; out lock released ;;
    *) out lock not-ours ;;
  esac
  ;;
break)
  state_dirs
  if break_lock "$1"; then out lock broken; else out lock changed; fi
  ;;
stage)
  token=$1 sha=$2
  shift 2
  require_lock "$token"
  drop_partials "$sha"
  stage="$R/$sha.partial"
  if [ -L "$stage" ]; then rm -f -- "$stage"; fi
  # This commit's partial is resumed only if none of its files is a hard
  # link. A stream transfer cut short leaves a copy of the live release made
  # of hard links, with the old modes; rsync would chmod those files in
  # place, in the live release too. (rsync's own links from --link-dest are
  # to files that already match, so dropping such a partial costs only time.)
  rm -f -- "$S/tmp/linked.$sha"
  if [ -d "$stage" ] && [ -n "$(find "$stage" -type f -links +1 2>/dev/null | head -n 1)" ]; then
    rm -rf -- "$stage" && out removed_partial "${stage##*/}"
  fi
  [ -d "$stage" ] || mkdir -- "$stage" || fail failed "cannot create $stage"
  out stage "$stage"
  survey "$sha" "$@"
  ;;
seal)
  # Completes the staged release: sentinel, shared-path links, completion
  # marker, then its final name. Nothing live changes. KEY names what the
  # release was built with (exclude patterns, shared paths): a stream builds
  # only on a release of the same KEY.
  token=$1 sha=$2 key=$3
  shift 3
  case $key in *[!0-9a-f]*) fail failed "bad build key" ;; esac
  require_lock "$token"
  stage="$R/$sha.partial"
  if [ ! -d "$stage" ] || [ -L "$stage" ]; then fail failed "staged release $stage is missing"; fi
  # .sync_rev at a release's root is vm-sync's: whatever stands there goes,
  # and the sentinel is written in vm-sync's own directory, then renamed in
  # (rename replaces a symlink; it never writes through one).
  rm -rf -- "$stage/.sync_rev"
  tmp="$S/tmp/sync_rev.$$"
  rm -rf -- "$tmp"
  printf '%s\n' "$sha" > "$tmp" || fail failed "cannot write $tmp"
  mv -f -- "$tmp" "$stage/.sync_rev" || fail failed "cannot write .sync_rev"
  if [ "$#" -gt 0 ]; then own_dir "$SH"; fi
  for spec in "$@"; do
    kind=${spec%%:*} rel=${spec#*:}
    case /$rel/ in *//* | */./* | */../*) fail failed "bad shared path $rel" ;; esac
    src="$stage/$rel" dst="$SH/$rel"
    safe_parent "$SH" "$rel" || fail unsafe_state_dir "a parent of $dst is a symlink or not a directory: vm-sync refuses to write there. Fix it by hand."
    safe_parent "$stage" "$rel" || fail failed "shared path $rel: a parent directory of it in the commit is a symlink or a file; shared paths need real directories in the tree"
    if [ ! -e "$dst" ] && [ ! -L "$dst" ]; then
      if [ "$kind" = d ] && [ -d "$src" ] && [ ! -L "$src" ]; then
        cp -a -- "$src" "$dst" || fail failed "cannot seed $dst"
        out seeded "$rel"
      elif [ "$kind" = f ] && [ -f "$src" ] && [ ! -L "$src" ]; then
        cp -a -- "$src" "$dst" || fail failed "cannot seed $dst"
        out seeded "$rel"
      elif [ "$kind" = d ]; then
        mkdir -m 700 -- "$dst" || fail failed "cannot create $dst"
        out created "$rel"
      else
        (umask 077 && : > "$dst") || fail failed "cannot create $dst"
        out created "$rel"
      fi
    fi
    rm -rf -- "$src"
    ln -s -- "$dst" "$src" || fail failed "cannot link $rel in the release"
  done
  flush "$stage"
  # Milliseconds (GNU date) keep two releases of one second in order. One
  # date, split here (three programs fewer on every deploy).
  now=$(date -u +%Y%m%dT%H%M%S.%N)
  ms=${now#*.}
  # Nanoseconds to milliseconds: the first three of nine digits (%N is not
  # expanded by a date that lacks it: no milliseconds then).
  if digits "$ms" && [ "${#ms}" = 9 ]; then ms=${ms%??????}; else ms=''; fi
  sha12=$sha
  while [ "${#sha12}" -gt 12 ]; do sha12=${sha12%?}; done
  name="${now%%.*}${ms}Z-$sha12"
  [ ! -e "$R/$name" ] || name="$name-$$"
  rm -rf -- "${C:?}/$name"
  own_dir "$S/manifests"
  rm -rf -- "${S:?}/manifests/$name"
  if gnu_tools; then
    mf="$S/tmp/manifest.$$"
    if ! { stat_list "$stage" > "$mf" && mv -f -- "$mf" "$S/manifests/$name"; }; then rm -f -- "$mf"; fi
  fi
  printf '%s\nkey=%s\n' "$sha" "$key" > "$C/$name" || fail failed "cannot write the completion marker"
  mv -- "$stage" "$R/$name" || { rm -f -- "$C/$name"; fail failed "cannot rename $stage"; }
  flush "$R"
  out release "$name"
  ;;
flip)
  # Points the target at a complete release (a deploy, a revert, a rollback).
  # REJECT=1 marks the release it replaces as one a rollback never goes back to.
  # ACTION and RUN go into revisions.log.
  token=$1 name=$2 reject=${3:-0} action=${4:-deploy} run=${5:-}
  require_lock "$token"
  case $name in '' | */* | .* | *.partial) fail failed "bad release name" ;; esac
  case $action in deploy | revert | rollback) ;; *) fail failed "bad flip action" ;; esac
  if [ ! -d "$R/$name" ] || [ -L "$R/$name" ] || [ ! -f "$C/$name" ]; then
    fail no_release "release $name is not kept complete on this VM"
  fi
  cur=$(current_release)
  out previous "${cur##*/}"
  if [ -z "$cur" ] && { [ -e "$T" ] || [ -L "$T" ]; }; then
    # First atomic deploy over something vm-sync did not create: keep it.
    previous="$S/previous-$(date -u +%Y%m%dT%H%M%SZ)"
    [ ! -e "$previous" ] || previous="$previous-$$"
    mv -- "$T" "$previous" || fail failed "cannot move $T aside"
    out moved_aside "$previous"
  fi
  link="$S/tmp/link.$$"
  rm -f -- "$link"
  ln -s -- ".$N.vm-sync/releases/$name" "$link" || fail failed "cannot create symlink"
  mv -f -T -- "$link" "$T" || { rm -f -- "$link"; fail failed "cannot flip $T"; }
  flush "$P"
  rm -rf -- "${RJ:?}/$name"
  if [ "$reject" = 1 ] && [ -n "$cur" ]; then
    rm -rf -- "${RJ:?}/${cur##*/}"
    : > "$RJ/${cur##*/}"
  fi
  # The flip history (the last 200 flips): what "previous" means for a rollback.
  if [ -L "$S/history" ]; then rm -f -- "$S/history"; fi
  printf '%s\n' "$name" >> "$S/history"
  if [ "$(wc -l < "$S/history")" -gt 400 ]; then
    keep=$(mktemp "$S/tmp/history.XXXXXX") && tail -n 200 -- "$S/history" > "$keep" && mv -f -- "$keep" "$S/history"
  fi
  revlog "$action" "$(marker_commit "${cur##*/}")" "$(marker_commit "$name")" "$run" "$name"
  out release "$name"
  ;;
link)
  # While the run's secret scan runs: this commit's partial release as a
  # hard-link copy of BASE (the live release, which begin's survey found
  # unchanged since it was sealed), the first part of `apply`'s work. Nothing of the commit is on
  # the VM yet, and nothing live changes; the partial is removed by
  # `unlock` when the run ends without building on it. Nothing that was
  # there is touched before the scan passed: not other commits' partials
  # (stage and apply remove those), and not one of this commit (then the
  # answer is linked='' and apply does the work).
  token=$1 sha=$2 base=$3
  require_lock "$token"
  gnu_tools || fail stream_failed "GNU tar and find are needed for the stream transfer"
  case $sha in *[!0-9a-f]* | '') fail failed "bad commit" ;; esac
  case $base in '' | */* | .* | *.partial) fail failed "bad base release name" ;; esac
  stage="$R/$sha.partial"
  if [ -e "$stage" ] || [ -L "$stage" ] || [ -e "$S/tmp/linked.$sha" ] || [ -L "$S/tmp/linked.$sha" ]; then
    out linked ''
  else
    cur=$(current_release)
    if [ "$cur" != "$R/$base" ] || [ ! -f "$C/$base" ]; then fail release_drifted "the live release is no longer $base"; fi
    # Whether BASE is still what vm-sync sealed is not checked here: begin's
    # survey checked it moments ago, and apply checks it again after the copy
    # (a change made in between, even one the copy picked up, shows there).
    # A drifted base costs this copy, never a release built on it.
    # Recorded before the copy starts: a copy cut short (the step killed at
    # its budget, the run cancelled) is still this run's, and unlock removes it.
    tmp="$S/tmp/linked.$sha.$$"
    if ! { printf '%s %s\n' "$token" "$base" > "$tmp" && mv -f -- "$tmp" "$S/tmp/linked.$sha"; }; then
      rm -f -- "$tmp"
      fail failed "cannot record the linked copy"
    fi
    if ! mkdir -- "$stage"; then
      rm -f -- "$S/tmp/linked.$sha"
      fail failed "cannot create $stage"
    fi
    if ! err=$(cp -al -- "$R/$base/." "$stage/" 2>&1); then
      rm -rf -- "$stage"
      rm -f -- "$S/tmp/linked.$sha"
      fail failed "cannot hard-link $base into $stage: $(printf '%s' "$err" | tail -n 2)"
    fi
    # Its directory entries reach the disk now, not in seal's flush after the scan.
    flush "$stage"
    out linked "$stage"
  fi
  ;;
apply)
  # Builds this commit's staged release from the stream on stdin: the paths to
  # remove (one a line, as printf %b escapes, ended by a line "."), then a
  # tar (compressed with CODEC: gzip or zstd) of the changed entries, each with its parent directories. With
  # BASE (a release name) the release starts as a hard-link copy of BASE,
  # which must be the live release and unchanged since it was sealed; without
  # it, from nothing. Nothing live changes; seal completes the release.
  token=$1 sha=$2 base=$3 codec=${4:-gzip} linked=${5:-0}
  require_lock "$token"
  gnu_tools || fail stream_failed "GNU tar and find are needed for the stream transfer"
  case $codec in
    gzip) unpack=-z ;;
    zstd) has_zstd || fail stream_failed "zstd is needed to unpack this stream and does not run here"; unpack='--use-compress-program=zstd' ;;
    *) fail failed "bad stream codec" ;;
  esac
  drop_partials "$sha"
  stage="$R/$sha.partial"
  # The copy `link` made while the scan ran is used only if this run made it
  # from this base, and it is still a plain directory; anything else is
  # made again here.
  reuse=0
  if [ "$linked" = 1 ] && [ -n "$base" ] && [ "$(linked_by "$sha")" = "$token $base" ] && [ -d "$stage" ] && [ ! -L "$stage" ]; then reuse=1; fi
  rm -f -- "$S/tmp/linked.$sha"
  if [ "$reuse" = 0 ]; then
    if [ -L "$stage" ]; then rm -f -- "$stage"; fi
    rm -rf -- "$stage" || fail failed "cannot remove $stage"
    mkdir -- "$stage" || fail failed "cannot create $stage"
  fi
  if [ -n "$base" ]; then
    case $base in */* | .* | *.partial) fail failed "bad base release name" ;; esac
    cur=$(current_release)
    drift=
    if [ "$cur" != "$R/$base" ] || [ ! -f "$C/$base" ]; then drift="the live release is no longer $base"
    # Checked again when reused: a file of the base changed in place since
    # the link would be changed in the copy too (they share the inode).
    elif ! intact "$base"; then drift="release $base was changed on this VM after vm-sync sealed it"
    fi
    if [ -n "$drift" ]; then
      # The copy (link's, its record gone above, or the empty directory made
      # here) is of no use to anyone: it goes now, not with a later step.
      rm -rf -- "$stage"
      fail release_drifted "$drift"
    fi
    if [ "$reuse" = 0 ] && ! err=$(cp -al -- "$R/$base/." "$stage/" 2>&1); then fail failed "cannot hard-link $base into $stage: $(printf '%s' "$err" | tail -n 2)"; fi
  fi
  removed=0
  while IFS= read -r line; do
    [ "$line" = . ] && break
    # Only a line with an escape needs printf (a fork per removal adds up).
    case $line in
      *\\*) rel=$(printf '%bx' "$line"); rel=${rel%x} ;;
      *) rel=$line ;;
    esac
    case /$rel/ in // | *//* | */./* | */../*) fail failed "bad path in the stream" ;; esac
    no_link_parent "$stage" "$rel" || fail release_drifted "a parent directory of a changed path is a symlink in $base"
    rm -rf -- "${stage:?}/$rel" || fail failed "cannot remove a changed path from $stage"
    removed=$((removed + 1))
    # Directories a deletion left empty go too (git keeps none; what the stream adds comes after).
    p=$rel
    while case $p in */*) true ;; *) false ;; esac; do
      p=${p%/*}
      if [ -L "$stage/$p" ]; then break; fi
      if [ -d "$stage/$p" ]; then rmdir -- "$stage/$p" 2>/dev/null || break; fi
    done
  done
  # GNU tar unlinks a file before writing it (a hard link to the live release
  # is never written through) and replaces a symlink where the stream has a
  # directory; members never leave the directory.
  # Its own error (a full disk) goes into the message: vm-sync classifies by it.
  if ! err=$(tar -x "$unpack" -f - -C "$stage" --no-same-owner --delay-directory-restore 2>&1); then
    # GNU tar reports a full disk as a short write ("Wrote only N of M bytes").
    case $err in
      *'No space left'* | *'Wrote only'* | *'Disk quota'*)
        free=$(df -Pk -- "$S" 2>/dev/null | awk 'NR == 2 { print $4 }')
        fail storage_full "No space left on device while unpacking into $stage (${free:-?} KB free): free space on the VM, then deploy again" ;;
    esac
    fail failed "cannot unpack the stream into $stage: $(printf '%s' "$err" | tail -n 2)"
  fi
  out removed "$removed"
  out stage "$stage"
  ;;
releases)
  # Read-only: the kept releases (complete ones with their commit) and the live one.
  cur=$(current_release)
  out live "${cur##*/}"
  out previous "$(previous_of "${cur##*/}")"
  for d in "$R"/*; do
    if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
    name=${d##*/}
    case $name in *.partial) continue ;; esac
    if [ -f "$C/$name" ]; then out release "$name $(head -c 100 -- "$C/$name" | head -n 1)"
    else out incomplete "$name"
    fi
  done
  ;;
renew)
  # Extends this run's lock (a VM that waits for its batch keeps it).
  token=$1 budget=$2
  require_lock "$token"
  digits "$budget" || fail failed "bad budget"
  rec=$(readlink -- "$L" | head -c "$LOCK_MAX")
  dl=$(field "$rec" deadline)
  now=$(date +%s)
  # Past its deadline another run may break it at any moment: never race that.
  if ! digits "$dl" || [ "$dl" -le $((now + 2)) ]; then fail lock_lost "this run's lock on $T expired before it was renewed"; fi
  rest=${rec#* }
  rest=${rest#* }
  link="$S/tmp/lock.$$"
  rm -f -- "$link"
  ln -s -T -- "vm-sync-lock-v2 deadline=$((now + budget)) $rest" "$link" || fail failed "cannot renew the lock"
  mv -f -T -- "$link" "$L" || { rm -f -- "$link"; fail failed "cannot renew the lock"; }
  out deadline "$((now + budget))"
  ;;
health)
  # The health command, in the live release; its output goes to the caller
  # unframed (bounded there). The caller's budget is the health timeout.
  token=$1 sha=$2 cmd=$3
  require_lock "$token"
  cd -- "$T" || fail failed "cannot enter $T"
  VM_SYNC_COMMIT=$sha VM_SYNC_TARGET=$T sh -c "$cmd" </dev/null 2>&1
  status=$?
  # Output without a final newline must not swallow the framed line after it.
  printf '\n'
  out exit "$status"
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
  # FROM (the commit the tree held before, or empty) and RUN go into revisions.log.
  token=$1 sha=$2 from=${3:-} run=${4:-}
  require_lock "$token"
  case $sha in *[!0-9a-f]* | '') fail failed "bad commit" ;; esac
  case $from in *[!0-9a-f]* | '') from=- ;; esac
  rm -rf -- "$T/.sync_rev"
  tmp="$S/tmp/sync_rev.$$"
  rm -rf -- "$tmp"
  printf '%s\n' "$sha" > "$tmp" || fail failed "cannot write $tmp"
  flush "$tmp"
  mv -f -- "$tmp" "$T/.sync_rev" || fail failed "cannot write .sync_rev"
  flush "$T"
  revlog deploy "$from" "$sha" "$run" -
  out rev "$sha"
  ;;
prune)
  # Keeps the newest KEEP complete releases, and always the live one and the
  # one before it (what a rollback goes to). Partial and incomplete releases,
  # and markers without a release, go.
  token=$1 keep=$2
  require_lock "$token"
  digits "$keep" || fail failed "bad keep"
  cur=$(current_release)
  cur=${cur##*/}
  for p in "$R"/*.partial; do
    [ -d "$p" ] && [ ! -L "$p" ] && rm -rf -- "$p" && out pruned "${p##*/}"
  done
  for m in "$C"/* "$RJ"/* "$S/manifests"/*; do
    if [ -e "$m" ] || [ -L "$m" ]; then [ -d "$R/${m##*/}" ] || rm -f -- "$m"; fi
  done
  list=$(mktemp "$S/tmp/prune.XXXXXX") || fail failed "cannot create a temporary file in $S/tmp"
  {
    for d in "$R"/*; do
      if [ -d "$d" ] && [ ! -L "$d" ] && [ -f "$C/${d##*/}" ]; then printf '%s\n' "${d##*/}"; fi
    done
    if [ -n "$cur" ]; then printf '%s\n' "$cur"; fi
  } | sort -r -u > "$list"
  # The release a rollback would go to is kept whatever its age.
  prev=$(previous_of "$cur")
  i=0
  while IFS= read -r name; do
    [ -f "$C/$name" ] && i=$((i + 1))
    if [ "$name" = "$cur" ] || [ "$name" = "$prev" ]; then continue; fi
    if [ -f "$C/$name" ] && [ "$i" -le "$keep" ]; then continue; fi
    rm -rf -- "${R:?}/$name" && rm -f -- "$C/$name" "$RJ/$name" && out pruned "$name"
  done < "$list"
  for d in "$R"/*; do
    if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
    name=${d##*/}
    if [ ! -f "$C/$name" ] && [ "$name" != "$cur" ]; then rm -rf -- "$d" && out pruned "$name"; fi
  done
  rm -f -- "$list"
  ;;
post)
  # The post-sync command, in the live release. Its output (stderr merged,
  # in order) goes to the caller unframed as it is printed, so a command
  # stopped by the budget still leaves what it printed; the caller keeps
  # the tail, bounded, and cleans it.
  token=$1 sha=$2 cmd=$3
  require_lock "$token"
  cd -- "$T" || fail failed "cannot enter $T"
  VM_SYNC_COMMIT=$sha VM_SYNC_TARGET=$T sh -c "$cmd" </dev/null 2>&1
  status=$?
  printf '\n'
  out exit "$status"
  ;;
revisions)
  # Read-only: the last LIMIT lines of revisions.log, each cut at 400 bytes,
  # one framed line each; vm-sync parses and checks every field.
  limit=$1
  digits "$limit" || fail failed "bad limit"
  if [ -L "$S" ]; then fail unsafe_state_dir "$S is a symlink: vm-sync refuses to read through it"; fi
  rl="$S/revisions.log"
  if [ -f "$rl" ] && [ ! -L "$rl" ]; then
    out log present
    tail -n "$limit" -- "$rl" | cut -b 1-400 | while IFS= read -r l || [ -n "$l" ]; do out revision "$l"; done
  else
    out log absent
  fi
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
  # hundreds): only `timeout` processes are looked at closer.
  for d in /proc/[0-9]*; do
    # Our own `timeout` carries these nonces as arguments too.
    [ "${d#/proc/}" = "$PPID" ] && continue
    comm=
    read -r comm 2>/dev/null < "$d/comm" || continue
    [ "$comm" = timeout ] || continue
    args=$(tr '\000' '\n' < "$d/cmdline" 2>/dev/null)
    for nonce in "$@"; do
      case "
$args
" in *"
$nonce
"*) groups="$groups ${d#/proc/}"; break ;; esac
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
listing)
  # Read-only: every entry of the live release (KIND=release) or of the
  # target directory (KIND=dir), for `verify --deep`. Nothing is followed:
  # find does not descend into symlinks and only regular files are hashed.
  # Names may hold any byte but NUL, so the listing is NUL-separated and sent
  # gzip'd, raw, after the line "@NONCE listing=gzip", ended by @NONCE end=ok:
  #   vm-sync-listing-1\0
  #   TYPE MODE SIZE\0PATH\0LINK-TARGET\0    per entry (%y %m %s, %P, %l)
  #   hashes\0
  #   SHA256  ./PATH\0                        per regular file
  #   end FIND-STATUS HASH-STATUS\0
  # More than MAX entries is refused before anything is hashed.
  max=$1 want=$2
  digits "$max" || fail failed "bad entry limit"
  listing_tools || fail failed "verify --deep needs GNU find and GNU coreutils (sha256sum -z, head) and gzip on the VM"
  case $want in
    release)
      # vm-sync's own directories: a planted symlink there would lead the listing elsewhere.
      if [ -L "$S" ] || [ -L "$R" ]; then fail unsafe_state_dir "$S or $R is a symlink: vm-sync refuses to read through it"; fi
      root=$(current_release)
      if [ -z "$root" ] || [ ! -d "$root" ] || [ -L "$root" ]; then fail no_release "$T is not vm-sync's symlink to a release: nothing to list"; fi
      ;;
    dir)
      if [ -L "$T" ] || [ ! -d "$T" ]; then fail no_release "$T is not a directory: nothing to list"; fi
      root=$T
      ;;
    *) fail failed "bad listing kind" ;;
  esac
  cd -- "$root" || fail failed "cannot enter $root"
  n=$(find . -mindepth 1 -printf x 2>/dev/null | head -c "$((max + 1))" | wc -c)
  [ "$n" -le "$max" ] || fail too_many "$root holds more than $max entries"
  printf '@%s listing=gzip\n' "$NONCE"
  {
    printf 'vm-sync-listing-1\0'
    find . -mindepth 1 -printf '%y %m %s\0%P\0%l\0'
    fst=$?
    printf 'hashes\0'
    find . -mindepth 1 -type f -exec sha256sum -z -- {} +
    hst=$?
    printf 'end %s %s\0' "$fst" "$hst"
  } | gzip -c
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
serve)
  # One session per VM: requests arrive on stdin, one a line:
  #   NONCE BUDGET OP ARG...    (each ARG is "=" then its bytes as printf %b escapes)
  # Each runs as its own `sh -c AGENT` under `timeout`, exactly as a command
  # of its own would: same budget, own process group, killed by its nonce.
  # Its stderr is kept (bounded) and framed after it, then @NONCE done=STATUS.
  src=$1
  # No file of its own: a full /tmp (often a small tmpfs) neither stops the
  # session nor loses a step's status.
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  out ready 1
  while IFS= read -r line; do
    set -f
    # shellcheck disable=SC2086 # the words of the request; globbing is off
    set -- $line
    set +f
    [ "$#" -ge 3 ] || continue
    rn=$1 rb=$2 rop=$3
    shift 3
    case $rn in '' | *[!0-9a-f]*) continue ;; esac
    digits "$rb" || continue
    case $rop in '' | *[!a-z-]*) continue ;; esac
    for w in "$@"; do
      shift
      w=${w#=}
      # Only a word with an escape needs printf (a fork per argument adds up over a deploy).
      case $w in
        *\\*) a=$(printf '%bx' "$w"); w=${a%x} ;;
      esac
      set -- "$@" "$w"
    done
    # The step's stdout goes straight to the session's (fd 3); what is
    # captured here is its exit status, then the last 4000 bytes of its
    # stderr. The status is written first: tail prints only once every
    # writer of its input has gone, and the group writes the status before
    # it goes. The step itself holds neither the capture (4) nor fd 3. The
    # status line carries the request's nonce: if the group died before
    # writing it, stderr that starts with a number is never taken for it.
    # The shell's own warnings (bash: a NUL in the capture) go nowhere.
    { res=$({ { timeout -k 3 "$rb" sh -c "$src" vm-sync "$rn" "$rop" "$TARGET_ARG" "$@" </dev/null 2>&1 1>&3 3>&- 4>&-; printf 'status-%s=%s\n' "$rn" "$?" >&4; } | tail -c 4000; } 4>&1); } 3>&1 2>/dev/null
    st=${res%%"$NL"*}
    st=${st#"status-$rn="}
    if [ "${res#"status-$rn="}" != "$res" ] && digits "$st"; then
      case $res in *"$NL"*) rest=${res#*"$NL"} ;; *) rest= ;; esac
    else
      # No status came (never seen): all of it is stderr, and an empty
      # status is a failure to vm-sync.
      st='' rest=$res
    fi
    # An operation killed while its command printed half a line must not glue
    # that half to the framed lines that follow.
    printf '\n'
    # One tr for all of the lines (a carriage return would end a line on a terminal).
    if [ -n "$rest" ]; then
      printf '%s\n' "$rest" | tr '\r' '?' | while IFS= read -r l; do printf '@%s stderr=%s\n' "$rn" "$l"; done
    fi
    printf '@%s done=%s\n' "$rn" "$st"
  done
  exit 0
  ;;
*)
  fail failed "unknown operation $op"
  ;;
esac
out end ok
