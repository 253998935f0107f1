#!/bin/bash
# tp_shell: a bash interpreter survives checkpoint/restore.
#
# Usage: bash tp_shell.sh WORKDIR [--corrupt]
#
# State: an indexed array and an associative array of 2000 entries each, a
# running sum, a function, the cwd, and a busy-loop counter. Uses builtins
# only: no command substitution, no external command, no subshell (stasis
# does not handle child processes yet), so waiting for go is a busy loop.
# Follows the ready/go/result protocol in crates/tests/src/lib.rs; ready and
# result are written with one printf each.

W=$1
corrupt=0
[[ $2 == --corrupt ]] && corrupt=1

declare -a arr
declare -A assoc
sum=0
for ((i = 0; i < 2000; i++)); do
    arr[i]=$((i * i % 7919))
    assoc["k$i"]="v$((i * 3))"
    sum=$((sum + arr[i]))
done
greet() { printf -v "$1" 'hello %s' "$2"; }
mypid=$$
cd "$W" || exit 2
text="some text with  spaces"

printf 'READY %s\n' "$$" > "$W/ready"

loops=0
while :; do
    loops=$((loops + 1))
    if [[ -e $W/go ]]; then
        g=
        read -r -n1 g < "$W/go"
        [[ $g == 1 ]] && break
    elif [[ ! -d $W ]]; then
        exit 3 # the harness is gone
    fi
done

((corrupt)) && arr[1000]=1

fail=()
[[ $$ == "$mypid" ]] || fail+=("\$\$ $$ != $mypid")
[[ $BASHPID == "$mypid" ]] || fail+=("BASHPID $BASHPID != $mypid")
check=0
for ((i = 0; i < 2000; i++)); do
    [[ ${arr[i]} == $((i * i % 7919)) ]] || { fail+=("arr[$i]=${arr[i]}"); break; }
    check=$((check + arr[i]))
done
[[ $check == "$sum" ]] || fail+=("array sum $check != $sum")
[[ ${#arr[@]} == 2000 ]] || fail+=("array has ${#arr[@]} entries")
[[ ${#assoc[@]} == 2000 ]] || fail+=("assoc has ${#assoc[@]} entries")
[[ ${assoc[k1999]} == v5997 ]] || fail+=("assoc[k1999]=${assoc[k1999]}")
greet out world
[[ $out == "hello world" ]] || fail+=("function result '$out'")
[[ $text == "some text with  spaces" ]] || fail+=("text '$text'")
[[ $PWD == "$W" ]] || fail+=("PWD $PWD")
((loops > 0)) || fail+=("loop counter $loops")

if ((${#fail[@]} == 0)); then
    printf 'PASS\n' > "$W/result"
    exit 0
fi
printf 'FAIL: %s\n' "${fail[*]}" > "$W/result"
exit 1
