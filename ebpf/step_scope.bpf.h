/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * step_scope: puts a new step into its policy step groups in the kernel, at
 * the step's first exec, before the step runs a single instruction. The
 * step's id or name is in its environment (GITHUB_ACTION, DRONE_STEP_NAME,
 * …), read only from the variables of its launcher's platform, so a job that
 * sets another platform's variable names nothing; it is matched against the
 * policy's `steps:` globs here, so a step that
 * connects in its first microsecond is already judged by its scoped rules.
 * Userspace later adds what only it can know (display names from the
 * runner's log); what the kernel sets is always a subset of that.
 */

/* The policy's patterns, in slots 0.. until the first with groups == 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CW_STEP_PATTERNS);
	__type(key, __u32);
	__type(value, struct cw_step_pattern);
} step_patterns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CW_STEP_VARS);
	__type(key, __u32);
	__type(value, struct cw_step_var);
} step_vars SEC(".maps");

#define CW_STEP_VAR_BUF 256

struct step_scratch {
	char var[CW_STEP_VAR_BUF];
	char values[CW_STEP_VARS][CW_STEP_TEXT];
	__u32 value_len[CW_STEP_VARS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct step_scratch);
} step_scratch SEC(".maps");

static __always_inline bool var_is(const struct step_scratch *s, const struct cw_step_var *v)
{
	for (int j = 0; j < CW_STEP_VAR_NAME; j++) {
		if ((__u32)j >= v->len)
			return true;
		if (s->var[j] != v->name[j])
			return false;
	}
	return false;
}

/* Copies the value after "NAME=" into values[k]; false if it is too long (left to userspace). */
static __always_inline bool take_value(struct step_scratch *s, __u32 k, __u32 name_len)
{
	k &= CW_STEP_VARS - 1;
	long n = bpf_probe_read_kernel_str(s->values[k], CW_STEP_TEXT, &s->var[name_len & (CW_STEP_VAR_NAME - 1)]);
	if (n <= 0 || n >= CW_STEP_TEXT)
		return false;
	s->value_len[k] = n - 1;
	return true;
}

struct env_walk {
	__u64 ptr;
	__u64 end;
	__u32 skipping; /* inside a variable longer than the buffer */
	__u32 found; /* bit k: values[k] holds step_vars[k]'s value */
	__u32 platform; /* only this platform's variables name the step */
	__u32 _pad;
};

/* One bpf_loop step: read the next variable of the environment and keep it if it names the step. */
static long env_var_step(__u32 i, void *ctx)
{
	struct env_walk *w = ctx;
	__u32 zero = 0;
	struct step_scratch *s = bpf_map_lookup_elem(&step_scratch, &zero);
	if (!s || w->ptr >= w->end)
		return 1;
	long n = bpf_probe_read_user_str(s->var, sizeof(s->var), (void *)w->ptr);
	if (n <= 0)
		return 1;
	bool whole = n < CW_STEP_VAR_BUF;
	bool starts = !w->skipping;
	w->skipping = !whole;
	w->ptr += whole ? n : n - 1;
	if (!starts)
		return 0;
	for (__u32 k = 0; k < CW_STEP_VARS; k++) {
		struct cw_step_var *v = bpf_map_lookup_elem(&step_vars, &k);
		if (!v || v->platform != w->platform || v->len == 0 || v->len >= CW_STEP_VAR_NAME ||
		    !var_is(s, v))
			continue;
		if (take_value(s, k, v->len))
			w->found |= 1u << k;
		return 0; /* the names differ: no other can match */
	}
	return 0;
}

/* `*` and `?` over bytes, one step per bpf_loop iteration, over every (value, pattern) pair. */
struct glob_walk {
	__u32 found;
	__u32 groups;
	__u32 v; /* value index */
	__u32 p; /* pattern index */
	__u32 pi;
	__u32 ti;
	__s32 star_p;
	__s32 star_t;
};

static __always_inline void restart(struct glob_walk *w)
{
	w->pi = 0;
	w->ti = 0;
	w->star_p = -1;
	w->star_t = -1;
}

static __always_inline void next_pattern(struct glob_walk *w)
{
	w->p++;
	restart(w);
}

static __always_inline void next_value(struct glob_walk *w)
{
	w->v++;
	w->p = 0;
	restart(w);
}

static long glob_step(__u32 i, void *ctx)
{
	struct glob_walk *w = ctx;
	__u32 zero = 0;
	if (w->v >= CW_STEP_VARS)
		return 1;
	if (!(w->found & (1u << w->v)) || w->p >= CW_STEP_PATTERNS) {
		next_value(w);
		return 0;
	}
	__u32 slot = w->p;
	struct cw_step_pattern *pat = bpf_map_lookup_elem(&step_patterns, &slot);
	struct step_scratch *s = bpf_map_lookup_elem(&step_scratch, &zero);
	if (!s || !pat || pat->groups == 0) {
		next_value(w);
		return 0;
	}
	__u32 v = w->v & (CW_STEP_VARS - 1);
	__u32 plen = pat->len < CW_STEP_TEXT ? pat->len : CW_STEP_TEXT;
	__u32 tlen = s->value_len[v] < CW_STEP_TEXT ? s->value_len[v] : CW_STEP_TEXT;
	char pc = w->pi < plen ? pat->text[w->pi & (CW_STEP_TEXT - 1)] : 0;
	if (w->ti < tlen) {
		char tc = s->values[v][w->ti & (CW_STEP_TEXT - 1)];
		if ((__u8)tc >= 0x80) {
			/* Byte and character globs differ here ('?'): never match, the engine decides. */
			next_pattern(w);
			return 0;
		}
		if (w->pi < plen && (pc == '?' || pc == tc)) {
			w->pi++;
			w->ti++;
		} else if (w->pi < plen && pc == '*') {
			w->star_p = w->pi;
			w->star_t = w->ti;
			w->pi++;
		} else if (w->star_p >= 0) {
			w->pi = w->star_p + 1;
			w->star_t++;
			w->ti = w->star_t;
		} else {
			next_pattern(w);
		}
		return 0;
	}
	if (w->pi < plen && pc == '*') {
		w->pi++;
		return 0;
	}
	if (w->pi >= plen)
		w->groups |= pat->groups;
	next_pattern(w);
	return 0;
}

/* Values x patterns x worst-case glob steps ((len + 1)^2 each). */
#define CW_GLOB_STEPS (CW_STEP_VARS * CW_STEP_PATTERNS * (CW_STEP_TEXT + 1) * (CW_STEP_TEXT + 1))

/* Called at a new step's first exec, before anything reports the step to userspace. */
static __always_inline void scope_step(struct task_struct *task, __u32 step, __u32 platform)
{
	__u32 zero = 0;
	struct cw_step_pattern *first = bpf_map_lookup_elem(&step_patterns, &zero);
	if (!first || first->groups == 0 || platform == 0)
		return;
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	struct env_walk env = {
		.ptr = BPF_CORE_READ(mm, env_start),
		.end = BPF_CORE_READ(mm, env_end),
		.platform = platform,
	};
	bpf_loop(4096, env_var_step, &env, 0);
	if (!env.found)
		return;
	struct glob_walk glob = { .found = env.found, .star_p = -1, .star_t = -1 };
	bpf_loop(CW_GLOB_STEPS, glob_step, &glob, 0);
	if (glob.groups)
		bpf_map_update_elem(&step_groups, &step, &glob.groups, BPF_ANY);
}
