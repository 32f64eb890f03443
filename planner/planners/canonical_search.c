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
 * When no free block is alive across some section boundary, the two sides are
 * independent: each is searched alone and a failure of either fails the node
 * (dynamic decomposition). Blocks of the side not being searched are parked.
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
    /* The preorder (canonical_ref.preorder_key), redone for each side of a split. */
    int heuristic, resort; /* resort: 0 keeps the caller's order on each side */
    const int64_t *width, *area;
    const int32_t *tie;
    int64_t *crowd;
    int32_t *orders; /* n per depth */
    int32_t *rank;
    int64_t cap, node_limit;
    double deadline;
    int64_t *floor, *rem, *minob, *val, *off, *saved;
    int64_t saved_top;
    int32_t *cands;    /* n per depth */
    int64_t *cand_off; /* their offsets: deeper levels overwrite val */
    int32_t *cross;    /* per section boundary: free blocks alive across it */
    int32_t *trail;    /* placed blocks, in order, to undo a solved side */
    int trail_top;
    int32_t *parked;   /* parked blocks, innermost split last */
    int parked_top;
    char *state;       /* FREE, PLACED or PARKED */
    /* Blocks alive together (CSR); val[] is kept up to date as blocks come and go:
     * each placement logs the values it raised, to restore them. */
    int32_t *ov_start, *ov;
    int32_t *chg_block, *chg_count;
    int64_t *chg_val;
    int64_t chg_top;
    int free_count;
    int64_t nodes, backtracks;
} Search;

enum { FREE = 0, PLACED = 1, PARKED = 2 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void place(Search *S, int b, int64_t offset) {
    const int64_t top = offset + S->size[b];
    int raised = 0;
    for (int k = S->ov_start[b]; k < S->ov_start[b + 1]; k++) {
        const int c = S->ov[k];
        if (S->state[c] == PLACED || S->val[c] >= top) continue;
        S->chg_block[S->chg_top] = c;
        S->chg_val[S->chg_top++] = S->val[c];
        S->val[c] = top;
        raised++;
    }
    S->chg_count[S->trail_top] = raised;
    for (int s = S->s0[b]; s < S->s1[b]; s++) {
        S->saved[S->saved_top++] = S->floor[s];
        S->floor[s] = top;
        S->rem[s] -= S->size[b];
    }
    S->state[b] = PLACED;
    S->off[b] = offset;
    S->trail[S->trail_top++] = b;
    S->free_count--;
}

static void unplace_last(Search *S) {
    const int b = S->trail[--S->trail_top];
    for (int k = S->chg_count[S->trail_top]; k > 0; k--) {
        S->chg_top--;
        S->val[S->chg_block[S->chg_top]] = S->chg_val[S->chg_top];
    }
    const int span = S->s1[b] - S->s0[b];
    S->saved_top -= span;
    for (int s = S->s0[b]; s < S->s1[b]; s++) {
        S->floor[s] = S->saved[S->saved_top + (s - S->s0[b])];
        S->rem[s] += S->size[b];
    }
    S->state[b] = FREE;
    S->free_count++;
}

static int dfs(Search *S, int depth, const int32_t *order, int norder, int64_t last,
               int32_t last_rank);

/* Negative when a goes first: canonical_ref.preorder_key, largest keys first. */
static int64_t before(const Search *S, int a, int b) {
    int64_t ka[3], kb[3];
    const int64_t *w = S->width, *ar = S->area, *cr = S->crowd;
    switch (S->heuristic) {
    case 0: ka[0] = w[a], ka[1] = ar[a], ka[2] = cr[a]; kb[0] = w[b], kb[1] = ar[b], kb[2] = cr[b]; break;
    case 1: ka[0] = cr[a], ka[1] = ar[a], ka[2] = w[a]; kb[0] = cr[b], kb[1] = ar[b], kb[2] = w[b]; break;
    case 2: ka[0] = cr[a], ka[1] = w[a], ka[2] = ar[a]; kb[0] = cr[b], kb[1] = w[b], kb[2] = ar[b]; break;
    default: ka[0] = ar[a], ka[1] = w[a], ka[2] = cr[a]; kb[0] = ar[b], kb[1] = w[b], kb[2] = cr[b]; break;
    }
    for (int k = 0; k < 3; k++)
        if (ka[k] != kb[k]) return ka[k] > kb[k] ? -1 : 1;
    return (int64_t)S->tie[a] - (int64_t)S->tie[b];
}

/* The free blocks in a fresh preorder (crowd from what is left to place), ranked. */
static int reorder(Search *S, int32_t *out) {
    int m = 0;
    for (int b = 0; b < S->n; b++) {
        if (S->state[b] != FREE) continue;
        int64_t c = 0;
        for (int s = S->s0[b]; s < S->s1[b]; s++)
            if (S->rem[s] > c) c = S->rem[s];
        S->crowd[b] = c;
        int at = m++;
        while (at > 0 && before(S, b, out[at - 1]) < 0) {
            out[at] = out[at - 1];
            at--;
        }
        out[at] = b;
    }
    for (int k = 0; k < m; k++) S->rank[out[k]] = k;
    return m;
}

/* Whether placing b with its top at `top` would raise some free block alive with it
 * (call with b unplaced and the floors as they were before placing it). */
static int has_hat(const Search *S, int b, int64_t top) {
    for (int k = S->ov_start[b]; k < S->ov_start[b + 1]; k++)
        if (S->state[S->ov[k]] == FREE && S->val[S->ov[k]] < top) return 1;
    return 0;
}

/* The first boundary no free block is alive across, with free blocks on both sides;
 * 0 when there is none. */
static int find_cut(Search *S) {
    int lo = S->nsec, hi = 0;
    for (int k = 0; k <= S->nsec; k++) S->cross[k] = 0;
    for (int b = 0; b < S->n; b++) {
        if (S->state[b] != FREE) continue;
        if (S->s0[b] < lo) lo = S->s0[b];
        if (S->s1[b] > hi) hi = S->s1[b];
        S->cross[S->s0[b] + 1]++;
        S->cross[S->s1[b]]--;
    }
    int alive = 0;
    for (int k = 1; k < hi; k++) {
        alive += S->cross[k];
        if (k > lo && alive == 0) return k;
    }
    return 0;
}

/* Search the free blocks left of `cut`, then those right of it, each alone and
 * afresh: a side's own canonical order starts again at offset 0 over the floors. */
static int split(Search *S, int depth, const int32_t *order, int norder, int cut) {
    int32_t *side = S->orders + (size_t)depth * (size_t)S->n;
    const int mark = S->trail_top, first = S->parked_top;
    for (int b = 0; b < S->n; b++)
        if (S->state[b] == FREE && S->s0[b] >= cut) {
            S->state[b] = PARKED;
            S->parked[S->parked_top++] = b;
        }
    const int right = S->parked_top - first;
    S->free_count -= right;
    int r = S->resort ? dfs(S, depth + 1, side, reorder(S, side), 0, -1)
                      : dfs(S, depth + 1, order, norder, 0, -1);
    while (S->parked_top > first) S->state[S->parked[--S->parked_top]] = FREE;
    S->free_count += right;
    if (r == 1) {
        r = S->resort ? dfs(S, depth + 1, side, reorder(S, side), 0, -1)
                      : dfs(S, depth + 1, order, norder, 0, -1);
        if (r != 1)
            while (S->trail_top > mark) unplace_last(S);
    }
    for (int k = 0; k < norder; k++) S->rank[order[k]] = k; /* the caller's ranks */
    return r;
}

static int dfs(Search *S, int depth, const int32_t *order, int norder, int64_t last,
               int32_t last_rank) {
    if (S->free_count == 0) return 1;
    S->nodes++;
    if (S->node_limit > 0 && S->nodes > S->node_limit) return -1;
    if ((S->nodes & 1023) == 0 && now() > S->deadline) return -1;

    const int n = S->n, nsec = S->nsec;
    int64_t min_height = INF;
    for (int s = 0; s < nsec; s++) S->minob[s] = INF;
    for (int k = 0; k < norder; k++) {
        const int b = order[k];
        if (S->state[b] != FREE) continue;
        const int64_t v = S->val[b]; /* the highest floor over its sections */
        if (v + S->size[b] < min_height) min_height = v + S->size[b];
        const int64_t start = v > last ? v : last;
        for (int s = S->s0[b]; s < S->s1[b]; s++)
            if (start < S->minob[s]) S->minob[s] = start;
    }
    /* Every free block alive in s starts at or above minob[s] and they all overlap
     * there, so they need rem[s] bytes above it. */
    for (int s = 0; s < nsec; s++)
        if (S->minob[s] != INF && S->minob[s] + S->rem[s] > S->cap) return 0;

    const int cut = find_cut(S);
    if (cut > 0) return split(S, depth, order, norder, cut);

    int32_t *cands = S->cands + (size_t)depth * (size_t)n;
    int64_t *coff = S->cand_off + (size_t)depth * (size_t)n;
    int nc = 0;
    for (int k = 0; k < norder; k++) {
        const int b = order[k];
        const int64_t v = S->val[b];
        if (S->state[b] != FREE || v < last || v >= min_height) continue;
        if (v == last && S->rank[b] <= last_rank) continue;
        if (S->twin_prev[b] >= 0 && S->state[S->twin_prev[b]] != PLACED) continue;
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
        place(S, b, m);
        int ok = 1;
        for (int s = S->s0[b]; s < S->s1[b]; s++)
            if (S->rem[s] > 0 && m + S->size[b] + S->rem[s] > S->cap) ok = 0;
        int r = ok ? dfs(S, depth + 1, order, norder, m, S->rank[b]) : 0;
        if (r == 1) return 1;
        unplace_last(S);
        if (r == -1) return -1;
        S->backtracks++;
        /* Nothing rests on b: its subtree was the rest of the problem unchanged, so
         * the other candidates (all at or above it) cannot do better. */
        if (!has_hat(S, b, m + S->size[b])) break;
    }
    return 0;
}

int canonical_search(int n, int nsec, const int64_t *size, const int32_t *s0,
                     const int32_t *s1, const int32_t *order, const int32_t *twin_prev,
                     int heuristic, int resort, const int64_t *width, const int64_t *area,
                     const int32_t *tie, int64_t cap, int64_t node_limit, double seconds,
                     int64_t *off_out, int64_t *counters) {
    Search S;
    memset(&S, 0, sizeof S);
    S.n = n;
    S.nsec = nsec;
    S.size = size;
    S.s0 = s0;
    S.s1 = s1;
    S.order = order;
    S.twin_prev = twin_prev;
    S.heuristic = heuristic;
    S.resort = resort;
    S.width = width;
    S.area = area;
    S.tie = tie;
    S.cap = cap;
    S.node_limit = node_limit;
    S.deadline = now() + seconds;
    S.free_count = n;
    int64_t spans = 0;
    for (int b = 0; b < n; b++) spans += s1[b] - s0[b];
    /* Each call either places a block or splits the free set, so depth < 2n + 2. */
    const size_t depths = 2 * (size_t)n + 2;
    S.rank = calloc((size_t)n + 1, sizeof *S.rank);
    S.floor = calloc((size_t)nsec + 1, sizeof *S.floor);
    S.rem = calloc((size_t)nsec + 1, sizeof *S.rem);
    S.minob = calloc((size_t)nsec + 1, sizeof *S.minob);
    S.val = calloc((size_t)n + 1, sizeof *S.val);
    S.off = calloc((size_t)n + 1, sizeof *S.off);
    S.saved = calloc((size_t)spans + 1, sizeof *S.saved);
    S.cands = calloc(depths * (size_t)n + 1, sizeof *S.cands);
    S.cand_off = calloc(depths * (size_t)n + 1, sizeof *S.cand_off);
    S.cross = calloc((size_t)nsec + 2, sizeof *S.cross);
    S.trail = calloc((size_t)n + 1, sizeof *S.trail);
    S.parked = calloc((size_t)n + 1, sizeof *S.parked);
    S.state = calloc((size_t)n + 1, 1);
    S.crowd = calloc((size_t)n + 1, sizeof *S.crowd);
    S.orders = calloc(depths * (size_t)n + 1, sizeof *S.orders);
    S.ov_start = calloc((size_t)n + 1, sizeof *S.ov_start);
    int64_t pairs = 0;
    if (S.ov_start) {
        for (int b = 0; b < n; b++) {
            S.ov_start[b] = (int32_t)pairs;
            for (int c = 0; c < n; c++)
                if (c != b && s0[c] < s1[b] && s0[b] < s1[c]) pairs++;
        }
        S.ov_start[n] = (int32_t)pairs;
        S.ov = calloc((size_t)pairs + 1, sizeof *S.ov);
        if (S.ov)
            for (int b = 0, k = 0; b < n; b++)
                for (int c = 0; c < n; c++)
                    if (c != b && s0[c] < s1[b] && s0[b] < s1[c]) S.ov[k++] = c;
    }
    S.chg_block = calloc((size_t)pairs + 1, sizeof *S.chg_block);
    S.chg_val = calloc((size_t)pairs + 1, sizeof *S.chg_val);
    S.chg_count = calloc((size_t)n + 1, sizeof *S.chg_count);
    int result = -2; /* out of memory */
    if (S.crowd && S.orders && S.ov_start && S.ov && S.chg_block && S.chg_val && S.chg_count && S.rank && S.floor && S.rem && S.minob && S.val && S.off && S.saved && S.cands &&
        S.cand_off && S.cross && S.trail && S.parked && S.state) {
        for (int k = 0; k < n; k++) S.rank[order[k]] = k;
        for (int b = 0; b < n; b++)
            for (int s = s0[b]; s < s1[b]; s++) S.rem[s] += size[b];
        result = dfs(&S, 0, order, n, 0, -1);
        if (result == 1)
            for (int b = 0; b < n; b++) off_out[b] = S.off[b];
    }
    counters[0] = S.nodes;
    counters[1] = S.backtracks;
    void *blocks[] = {S.rank, S.floor, S.rem, S.minob, S.val, S.off, S.saved,
                      S.cands, S.cand_off, S.cross, S.trail, S.parked, S.state,
                      S.ov_start, S.ov, S.chg_block, S.chg_val, S.chg_count,
                      S.crowd, S.orders};
    for (size_t k = 0; k < sizeof blocks / sizeof *blocks; k++) free(blocks[k]);
    return result;
}
