# bash completion for phi3 and the phi3-* tools (installed by `make install` as
# share/bash-completion/completions/phi3, with a link per tool name so that
# bash-completion loads it on demand). Options come from each tool's --help, so they
# never go stale; the values of a few options are completed too.

# _phi3_opts CMD [SUB]: the long and short options that CMD's --help lists.
_phi3_opts() {
  "$@" --help 2>&1 | grep -o -- '\(^\|[[:space:],[]\)--\?[a-zA-Z][a-zA-Z0-9-]*' |
    grep -o -- '-\{1,2\}[a-zA-Z][a-zA-Z0-9-]*' | sort -u
}

# _phi3_value PREV CUR: complete the value of option PREV; returns 1 if PREV takes none.
_phi3_value() {
  local prev=$1 cur=$2 run
  case "$prev" in
    -m|--model|--messages|-f|--file|--sampler|--server)
      if [ "$prev" = -m ] || [ "$prev" = --model ]; then
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
      else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      fi ;;
    --backend) mapfile -t COMPREPLY < <(compgen -W "auto cpu cuda" -- "$cur") ;;
    --kv-type) mapfile -t COMPREPLY < <(compgen -W "f32 f16" -- "$cur") ;;
    --session|--session-info|--session-rm)
      run=$(command -v phi3-run 2>/dev/null) || return 0
      mapfile -t COMPREPLY < <(compgen -W "$("$run" --session-list 2>/dev/null | cut -f1)" -- "$cur") ;;
    -n|--max-tokens|-t|--temperature|--top-k|--top-p|--min-p|--typical-p|--repeat-penalty|\
    --presence-penalty|--frequency-penalty|--repeat-last-n|--logit-bias|--seed|--stop|--stop-ids|\
    --system|--ctx|--threads|--show-logits|--top|--max-frame)
      COMPREPLY=() ;;   # a value the user types
    *) return 1 ;;
  esac
  return 0
}

_phi3() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
  if [ "$COMP_CWORD" -eq 1 ]; then
    mapfile -t COMPREPLY < <(compgen -W "generate chat count --help --version" -- "$cur")
    return
  fi
  _phi3_value "$prev" "$cur" && return
  if [[ "$cur" == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$(_phi3_opts "${COMP_WORDS[0]}")" -- "$cur")
  elif [ "${COMP_WORDS[1]}" = generate ] || [ "${COMP_WORDS[1]}" = count ]; then
    COMPREPLY=()    # the prompt
  fi
}

_phi3_tool() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
  _phi3_value "$prev" "$cur" && return
  if [[ "$cur" == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$(_phi3_opts "${COMP_WORDS[0]}")" -- "$cur")
  else
    mapfile -t COMPREPLY < <(compgen -f -- "$cur")   # an input file
  fi
}

complete -F _phi3 phi3
# every phi3-* command on PATH (tools added later too), and the known ones
# shellcheck disable=SC2046
complete -F _phi3_tool phi3-template phi3-tok phi3-run phi3-sample phi3-detok phi3-dump \
  $(compgen -c phi3- 2>/dev/null | grep -v '\.so$' | sort -u)
