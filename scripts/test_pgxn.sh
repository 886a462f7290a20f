#!/usr/bin/env bash
# test_pgxn.sh: check META.json and the PGXN archive that make dist makes.
#
#   scripts/test_pgxn.sh
#
# Checks META.json against the rules of the PGXN Meta Spec 1.0.0 (required
# keys, their forms, semantic versions, the license and release status
# names) and against the tree (the versions of idem.control and
# debian/changelog, the provided file).  Then makes the archive with make
# dist from the tracked files as they are on disk, unpacks it in a scratch
# folder, checks what it holds, builds it there with PGXS, installs it below
# the scratch folder (extension_destdir) and runs its make installcheck on
# a throwaway cluster: the regression tests, the isolation specs and the
# upgrade test t/040_upgrade.pl (the rest of the TAP suite is the same as in
# scripts/test.sh and needs node).  Ends with "pgxn: N passed, N failed";
# exits 77 when the tree is not a git checkout (nothing to archive).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
if ! git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    echo "test_pgxn.sh: skipped, $root is not a git checkout"
    exit 77
fi
if ! command -v unzip >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then echo "test_pgxn.sh: needs unzip; run as root to install it" >&2; exit 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends unzip >/dev/null
fi

# shellcheck source=cluster.sh
source "$root/scripts/cluster.sh"

scratch=$(mktemp -d /tmp/idem-pgxn.XXXXXX)
cleanup() { cluster_stop "$scratch/cluster"; rm -rf "$scratch"; }
trap cleanup EXIT
passed=0
failed=0

# ok/not ok lines from a checker are counted as they are.
count() {
    local log=$1
    cat "$log"
    passed=$((passed + $(grep -c '^ok ' "$log" || true)))
    failed=$((failed + $(grep -c '^not ok ' "$log" || true)))
}

echo "== META.json"
# The Meta Spec's rules, as written in https://pgxn.org/spec/ (1.0.0); no
# validator is packaged for Debian, so this is one.
TREE=$root perl -MJSON::PP -e '
    use strict; use warnings;
    my ($file, $control, $changelog) = @ARGV;
    sub check ($$) { my ($ok, $what) = @_; print(($ok ? "ok" : "not ok") . " - META.json: $what\n"); }
    my $text = do { local $/; open my $fh, "<", $file or die "$file: $!"; <$fh> };
    my $meta = eval { JSON::PP->new->decode($text) };
    check($meta && ref $meta eq "HASH", "is a JSON object") or exit;
    my $semver = qr/^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+)?$/;
    my %known = map { $_ => 1 } qw(name abstract description version maintainer license provides
        prereqs release_status resources no_index generated_by tags meta-spec);
    check(!grep({ !$known{$_} && !/^[xX]_/ } keys %$meta), "every key is one of the spec (or x_...)");
    for my $key (qw(name abstract maintainer license provides version meta-spec)) {
        check(exists $meta->{$key}, "has the required key $key");
    }
    check(($meta->{name} // "") =~ /^[^\/\\\x00-\x1f\s][^\/\\\x00-\x1f]+$/, "name is a valid distribution name");
    check(!ref $meta->{abstract} && length($meta->{abstract} // "") > 0, "abstract is a string");
    check(($meta->{version} // "") =~ $semver, "version is a semantic version");
    my @maint = ref $meta->{maintainer} eq "ARRAY" ? @{ $meta->{maintainer} } : ($meta->{maintainer} // "");
    check(@maint && !grep({ ref $_ || !/\S/ } @maint), "maintainer is a string or a list of them");
    my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd freebsd
        gfdl_1_2 gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1 openssl
        perl_5 postgresql qpl_1_0 ssleay sun zlib open_source restricted unrestricted unknown);
    check(($meta->{license} // "") eq "postgresql" && $licenses{ $meta->{license} },
        "license is postgresql, a name of the spec");
    check(ref $meta->{"meta-spec"} eq "HASH" && ($meta->{"meta-spec"}{version} // "") eq "1.0.0",
        "meta-spec is version 1.0.0");
    my $provides = ref $meta->{provides} eq "HASH" ? $meta->{provides} : {};
    check(keys %$provides, "provides names at least one extension");
    for my $ext (sort keys %$provides) {
        my $p = $provides->{$ext};
        check(ref $p eq "HASH" && defined $p->{file} && ($p->{version} // "") =~ $semver,
            "provides $ext with a file and a semantic version");
        check(-f "$ENV{TREE}/$p->{file}", "the file of $ext, $p->{file}, is in the tree");
        check(!defined $p->{docfile} || -f "$ENV{TREE}/$p->{docfile}", "and so is its docfile");
    }
    my %phases = map { $_ => 1 } qw(configure build test runtime develop);
    my %relations = map { $_ => 1 } qw(requires recommends suggests conflicts);
    my @bad;
    for my $phase (keys %{ $meta->{prereqs} // {} }) {
        push @bad, $phase unless $phases{$phase};
        for my $rel (keys %{ $meta->{prereqs}{$phase} }) {
            push @bad, "$phase.$rel" unless $relations{$rel};
            for my $v (values %{ $meta->{prereqs}{$phase}{$rel} }) {
                push @bad, "$phase.$rel=$v" unless $v eq "0" || $v =~ $semver
                  || $v =~ /^\s*(?:[<>]=?|==|!=)\s*\d+\.\d+\.\d+(?:\s*,\s*(?:[<>]=?|==|!=)\s*\d+\.\d+\.\d+)*\s*$/;
            }
        }
    }
    check(!@bad, "prereqs use the phases, relations and version forms of the spec (" . join(" ", @bad) . ")");
    # the majors scripts/matrix.sh and the suite test: 13 to 18
    check(($meta->{prereqs}{runtime}{requires}{PostgreSQL} // "") eq ">= 13.0.0, < 19.0.0",
        "the runtime requires PostgreSQL 13 to 18, the majors the tests run");
    check(($meta->{release_status} // "stable") =~ /^(stable|testing|unstable)$/, "release_status is one of the spec");
    check(!defined $meta->{tags} || (ref $meta->{tags} eq "ARRAY"
        && !grep({ ref $_ || !length $_ || length $_ > 255 } @{ $meta->{tags} })), "tags are short strings");
    # the same version everywhere
    my ($default) = do { local $/; open my $fh, "<", $control or die; <$fh> } =~ /^default_version\s*=\s*\x27([^\x27]+)\x27/m;
    check("$default.0" eq $meta->{version} || $default eq $meta->{version},
        "version $meta->{version} is idem.control default_version $default");
    check(($provides->{idem}{version} // "") eq $meta->{version}, "provides idem at that version");
    check(($provides->{idem}{file} // "") eq "idem--$default.sql", "from the install script of $default");
    my ($debver) = do { local $/; open my $fh, "<", $changelog or die; <$fh> } =~ /^idem \(([^)]+)\)/;
    check(($debver // "") eq $meta->{version}, "debian/changelog is at the same version");
' "$root/META.json" "$root/idem.control" "$root/debian/changelog" >"$scratch/meta.log" 2>&1 \
    || echo "not ok - META.json checker ran" >>"$scratch/meta.log"
count "$scratch/meta.log"

echo "== make dist"
# The tracked files as they are on disk.
make -C "$root" -s dist DIST_REF="$(worktree_ref "$root")" DIST_DIR="$scratch" >"$scratch/dist.log" 2>&1 || cat "$scratch/dist.log"
# make dist prints the archive's path last (DIST_DIR/idem-VERSION.zip)
zip=$(tail -n 1 "$scratch/dist.log")
version=${zip##*/idem-}
version=${version%.zip}
unzip -q "$zip" -d "$scratch/unpacked" || true
tree=$scratch/unpacked/idem-$version
{
    if [ "$(ls -A "$scratch/unpacked" 2>&1)" = "idem-$version" ]; then
        echo "ok - idem-$version.zip holds one folder, idem-$version"
    else
        echo "not ok - idem-$version.zip holds one folder, idem-$version: $(ls -A "$scratch/unpacked" 2>&1)"
    fi
    missing=
    for f in META.json Makefile idem.control LICENSE README.md $(cd "$root" && git ls-files -- 'idem--*.sql' sql expected specs t src idem.c); do
        [ -e "$tree/$f" ] || missing+=" $f"
    done
    if [ -z "$missing" ]; then
        echo "ok - it has META.json, the sources, the version scripts and the tests"
    else
        echo "not ok - it lacks:$missing"
    fi
    extra=
    for f in bench clients scripts/test.sh .gitignore; do
        [ -e "$tree/$f" ] && extra+=" $f"
    done
    if [ -z "$extra" ]; then
        echo "ok - and not the client libraries, the benchmarks or the suite runner"
    else
        echo "not ok - it has what .gitattributes leaves out:$extra"
    fi
} >"$scratch/archive.log" 2>&1
count "$scratch/archive.log"

echo "== build and installcheck from the archive"
run() {
    local what=$1; shift
    if "$@" >"$scratch/step.log" 2>&1; then
        echo "ok - $what"; passed=$((passed + 1))
    else
        tail -40 "$scratch/step.log"; echo "not ok - $what"; failed=$((failed + 1)); return 1
    fi
}
if [ -d "$tree" ] && run "the archive builds and installs with PGXS" stage_install "$tree" "$scratch"; then
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$scratch"
    cluster_start "$scratch/cluster" "$(idem_conf)"
    as_pg make -C "$tree" -s installcheck PROVE_TESTS=t/040_upgrade.pl >"$scratch/check.log" 2>&1 || true
    cat "$scratch/check.log"
    ok=$(grep -cE '^(ok|test) .* \.\.\. ok|^ok +[0-9]+ +[-+] |^t/.*\.pl \.+ ok' "$scratch/check.log" || true)
    bad=$(grep -cE 'FAILED|^not ok|^t/.*\.pl \.+ *$|^t/.*\.pl \.+ (Dubious|Failed)' "$scratch/check.log" || true)
    regress=$(grep -cE '^(ok|test) .* \.\.\. ok|^ok +[0-9]+ +[-+] ' "$scratch/check.log" || true)
    echo "make installcheck in the unpacked archive: $ok ok, $bad failed"
    passed=$((passed + ok))
    failed=$((failed + bad))
    # installcheck stops at the first failing suite: all three must have run
    # (pg_regress and pg_isolation_regress each end with "All N tests passed")
    if [ "$(grep -cE 'All [0-9]+ tests passed' "$scratch/check.log")" -eq 2 ] && grep -q '^Result: PASS' "$scratch/check.log"; then
        echo "ok - every suite of make installcheck ran and passed ($regress regression and isolation tests)"; passed=$((passed + 1))
    else
        for d in "$tree/regression.diffs" "$tree/output_iso/regression.diffs"; do [ -s "$d" ] && head -100 "$d"; done
        echo "not ok - make installcheck in the unpacked archive"; failed=$((failed + 1))
    fi
fi

echo "pgxn: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
