/* Canonical-order search for static offset assignment: the compiled core of
 * planner/planners/canonical.py. It mirrors canonical_ref.py step for step (the
 * tests check that both visit the same number of nodes and return the same
 * offsets), so read that file for the reasoning; this one only adds memory layout.
 *
 * Time is cut into sections; block b is alive in sections [s0[b], s1[b]).
 * floor[s] is the top of the placed blocks in section s; rem[s] the bytes of the
 * unplaced blocks alive there. Blocks are placed in non-decreasing offset order,
 * each at the highest floor over its sections; a block is a candidate only below
 * the lowest top any unplaced block could reach (dominance).
 *
 * Returns 1 (packed; offsets in off_out), 0 (the whole tree was searched: no
 * packing within cap), -1 (node or time limit). counters[0] = nodes,
 * counters[1] = backtracks.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define INF INT64_MAX

typedef struct {
    int n, nsec;
    const int64_t *size;
    const int32_t *s0, *s1, *order, *twin_prev;
    int32_t *rank;
    int64_t cap, node_limit;
    double deadline;
    int64_t *floor, *rem, *minob, *val, *off, *saved;
    int64_t saved_top;
    int32_t *cands;    /* n per depth */
    int64_t *cand_off; /* their offsets: deeper levels overwrite val */
    char *placed;
    int64_t nodes, backtracks;
} Search;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int dfs(Search *S, int depth, int64_t last, int32_t last_rank) {
    if (depth == S->n) return 1;
    S->nodes++;
    if (S->node_limit > 0 && S->nodes > S->node_limit) return -1;
    if ((S->nodes & 1023) == 0 && now() > S->deadline) return -1;

    const int n = S->n, nsec = S->nsec;
    int64_t min_height = INF;
    for (int s = 0; s < nsec; s++) S->minob[s] = INF;
    for (int k = 0; k < n; k++) {
        const int b = S->order[k];
        if (S->placed[b]) continue;
        int64_t v = 0;
        for (int s = S->s0[b]; s < S->s1[b]; s++)
            if (S->floor[s] > v) v = S->floor[s];
        S->val[b] = v;
        if (v + S->size[b] < min_height) min_height = v + S->size[b];
        const int64_t start = v > last ? v : last;
        for (int s = S->s0[b]; s < S->s1[b]; s++)
            if (start < S->minob[s]) S->minob[s] = start;
    }
    /* Every unplaced block alive in s starts at or above minob[s] and they all
     * overlap there, so they need rem[s] bytes above it. */
    for (int s = 0; s < nsec; s++)
        if (S->rem[s] > 0 && S->minob[s] + S->rem[s] > S->cap) return 0;

    int32_t *cands = S->cands + (size_t)depth * (size_t)n;
    int64_t *coff = S->cand_off + (size_t)depth * (size_t)n;
    int nc = 0;
    for (int k = 0; k < n; k++) {
        const int b = S->order[k];
        const int64_t v = S->val[b];
        if (S->placed[b] || v < last || v >= min_height) continue;
        if (v == last && S->rank[b] <= last_rank) continue;
        if (S->twin_prev[b] >= 0 && !S->placed[S->twin_prev[b]]) continue;
        if (v + S->size[b] > S->cap) continue;
        /* insertion by offset; equal offsets keep rank order */
        int at = nc++;
        while (at > 0 && coff[at - 1] > v) {
            cands[at] = cands[at - 1];
            coff[at] = coff[at - 1];
            at--;
        }
        cands[at] = b;
        coff[at] = v;
    }
    for (int c = 0; c < nc; c++) {
        const int b = cands[c];
        const int64_t m = coff[c];
        const int64_t top = m + S->size[b];
        const int64_t base = S->saved_top;
        int ok = 1;
        for (int s = S->s0[b]; s < S->s1[b]; s++) {
            S->saved[S->saved_top++] = S->floor[s];
            S->floor[s] = top;
            S->rem[s] -= S->size[b];
            if (S->rem[s] > 0 && top + S->rem[s] > S->cap) ok = 0;
        }
        S->placed[b] = 1;
        S->off[b] = m;
        int r = ok ? dfs(S, depth + 1, m, S->rank[b]) : 0;
        if (r == 1) return 1;
        S->placed[b] = 0;
        for (int s = S->s0[b]; s < S->s1[b]; s++) {
            S->floor[s] = S->saved[base + (s - S->s0[b])];
            S->rem[s] += S->size[b];
        }
        S->saved_top = base;
        if (r == -1) return -1;
        S->backtracks++;
    }
    return 0;
}

int canonical_search(int n, int nsec, const int64_t *size, const int32_t *s0,
                     const int32_t *s1, const int32_t *order, const int32_t *twin_prev,
                     int64_t cap, int64_t node_limit, double seconds, int64_t *off_out,
                     int64_t *counters) {
    Search S;
    memset(&S, 0, sizeof S);
    S.n = n;
    S.nsec = nsec;
    S.size = size;
    S.s0 = s0;
    S.s1 = s1;
    S.order = order;
    S.twin_prev = twin_prev;
    S.cap = cap;
    S.node_limit = node_limit;
    S.deadline = now() + seconds;
    int64_t spans = 0;
    for (int b = 0; b < n; b++) spans += s1[b] - s0[b];
    S.rank = calloc((size_t)n + 1, sizeof *S.rank);
    S.floor = calloc((size_t)nsec + 1, sizeof *S.floor);
    S.rem = calloc((size_t)nsec + 1, sizeof *S.rem);
    S.minob = calloc((size_t)nsec + 1, sizeof *S.minob);
    S.val = calloc((size_t)n + 1, sizeof *S.val);
    S.off = calloc((size_t)n + 1, sizeof *S.off);
    S.saved = calloc((size_t)spans + 1, sizeof *S.saved);
    S.cands = calloc((size_t)n * (size_t)n + 1, sizeof *S.cands);
    S.cand_off = calloc((size_t)n * (size_t)n + 1, sizeof *S.cand_off);
    S.placed = calloc((size_t)n + 1, 1);
    int result = -2; /* out of memory */
    if (S.rank && S.floor && S.rem && S.minob && S.val && S.off && S.saved && S.cands &&
        S.cand_off && S.placed) {
        for (int k = 0; k < n; k++) S.rank[order[k]] = k;
        for (int b = 0; b < n; b++)
            for (int s = s0[b]; s < s1[b]; s++) S.rem[s] += size[b];
        result = dfs(&S, 0, 0, -1);
        if (result == 1)
            for (int b = 0; b < n; b++) off_out[b] = S.off[b];
    }
    counters[0] = S.nodes;
    counters[1] = S.backtracks;
    free(S.rank);
    free(S.floor);
    free(S.rem);
    free(S.minob);
    free(S.val);
    free(S.off);
    free(S.saved);
    free(S.cands);
    free(S.cand_off);
    free(S.placed);
    return result;
}
