/* DGSU selection: twins of tinytrain/train/kernels/select.py (see include/tt_select.h). */
#include "tt_select.h"

#define TT_SELECT_LOG_LIMIT (1L << 24)

/* An order-preserving uint64 key of a score: |score| (magnitude) or score + 2^63. */
static uint64_t tt_select_key(int64_t s, int32_t magnitude) {
    if (magnitude) {
        return s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    }
    return (uint64_t)s ^ ((uint64_t)1 << 63);
}

tt_status tt_select_rows(const int64_t *score, int32_t n, int32_t magnitude, uint16_t *age, int32_t k,
                         int32_t explore, uint8_t *chosen, uint16_t *sel) {
    int32_t i;
    int32_t pick;
    int32_t j;
    if (score == NULL || chosen == NULL || sel == NULL || n < 0 || n > TT_SELECT_AGE_MAX || explore < 0 ||
        explore > k || k > n || (age == NULL && k != n)) {
        return TT_ERR_ARG;
    }
    for (i = 0; i < n; ++i) {
        chosen[i] = (uint8_t)(k == n ? 1 : 0);
    }
    if (k < n) {
        for (pick = 0; pick < k - explore; ++pick) { /* by key, then age, then lower index */
            int32_t best = -1;
            uint64_t best_key = 0;
            for (i = 0; i < n; ++i) {
                uint64_t key;
                if (chosen[i]) {
                    continue;
                }
                key = tt_select_key(score[i], magnitude);
                if (best < 0 || key > best_key || (key == best_key && age[i] > age[best])) {
                    best = i;
                    best_key = key;
                }
            }
            chosen[best] = 1;
        }
        for (pick = 0; pick < explore; ++pick) { /* by age, then lower index */
            int32_t best = -1;
            for (i = 0; i < n; ++i) {
                if (!chosen[i] && (best < 0 || age[i] > age[best])) {
                    best = i;
                }
            }
            chosen[best] = 1;
        }
    }
    j = 0;
    for (i = 0; i < n; ++i) {
        if (chosen[i]) {
            sel[j++] = (uint16_t)i;
            if (age != NULL) {
                age[i] = 0;
            }
        } else if (age != NULL && age[i] < TT_SELECT_AGE_MAX) {
            age[i] = (uint16_t)(age[i] + 1);
        }
    }
    return TT_OK;
}

tt_status tt_select_dgsu_rows(const int64_t *bias_grad, int32_t n, uint16_t *age, int32_t k, int32_t explore,
                              const uint8_t *active, uint8_t *chosen, uint16_t *sel, int32_t *count) {
    if (count == NULL) {
        return TT_ERR_ARG;
    }
    if (active != NULL && *active == 0) {
        *count = 0;
        return TT_OK;
    }
    *count = k;
    return tt_select_rows(bias_grad, n, 1, age, k, explore, chosen, sel);
}

int32_t tt_select_log2_q8(uint64_t total, int32_t e) {
    int32_t bits = 0;
    int64_t frac;
    int64_t val;
    uint64_t t = total;
    if (total == 0) {
        return -(int32_t)TT_SELECT_LOG_LIMIT;
    }
    while (t != 0) {
        ++bits;
        t >>= 1;
    }
    if (bits >= 9) {
        frac = (int64_t)((total >> (bits - 9)) & 0xFFu);
    } else {
        frac = (int64_t)((total << (9 - bits)) & 0xFFu);
    }
    val = 256 * ((int64_t)bits - 1 + (int64_t)e) + frac;
    if (val > TT_SELECT_LOG_LIMIT) {
        val = TT_SELECT_LOG_LIMIT;
    } else if (val < -TT_SELECT_LOG_LIMIT) {
        val = -TT_SELECT_LOG_LIMIT;
    }
    return (int32_t)val;
}

tt_status tt_select_layer_signal(const int64_t *bias_grad, int32_t n, int32_t e, int32_t *ema, int64_t *score) {
    uint64_t total = 0;
    int32_t i;
    int32_t lq;
    int32_t d;
    if (bias_grad == NULL || ema == NULL || score == NULL || n < 0) {
        return TT_ERR_ARG;
    }
    for (i = 0; i < n; ++i) {
        int64_t b = bias_grad[i];
        total += b < 0 ? (uint64_t)0 - (uint64_t)b : (uint64_t)b;
    }
    lq = tt_select_log2_q8(total, e);
    if (*ema == TT_SELECT_EMA_UNSET) {
        *score = 0;
        *ema = lq;
        return TT_OK;
    }
    d = lq - *ema; /* |lq|, |ema| <= 2^24: no overflow */
    *score = d;
    *ema = *ema + tt_asr32(d, 3);
    return TT_OK;
}

tt_status tt_select_cls_change(const int8_t *rows, int32_t n_rows, int32_t dim, const int32_t *zp, const int32_t *mult,
                               const uint16_t *src, const uint16_t *dst, int32_t n, int64_t *score) {
    int32_t j;
    int32_t d;
    if (rows == NULL || zp == NULL || mult == NULL || src == NULL || dst == NULL || score == NULL || n_rows < 0 ||
        dim < 0 || n < 0) {
        return TT_ERR_ARG;
    }
    for (j = 0; j < n; ++j) {
        if ((int32_t)src[j] >= n_rows || (int32_t)dst[j] >= n_rows) {
            return TT_ERR_ARG;
        }
    }
    for (j = 0; j < n; ++j) {
        const int8_t *a = rows + (int32_t)src[j] * dim;
        const int8_t *b = rows + (int32_t)dst[j] * dim;
        int64_t total = 0;
        for (d = 0; d < dim; ++d) {
            int64_t x = ((int64_t)b[d] - zp[dst[j]]) * mult[dst[j]] - ((int64_t)a[d] - zp[src[j]]) * mult[src[j]];
            total += x < 0 ? -x : x;
        }
        score[j] = total;
    }
    return TT_OK;
}
