/* phosphene_wire.c: see phosphene_wire.h and docs/protocol.md. C99, no dependencies. */
#include "phosphene_wire.h"

#include <string.h>

/* Table-driven CRC-32, one table lookup per byte. The table is const (flash on an MCU);
 * replace pw_crc32 with the MCU's CRC unit if it computes the same reflected CRC-32. */
static const uint32_t pw_crc_table[256] = {
    0x00000000u, 0x77073096u, 0xEE0E612Cu, 0x990951BAu, 0x076DC419u, 0x706AF48Fu, 0xE963A535u, 0x9E6495A3u,
    0x0EDB8832u, 0x79DCB8A4u, 0xE0D5E91Eu, 0x97D2D988u, 0x09B64C2Bu, 0x7EB17CBDu, 0xE7B82D07u, 0x90BF1D91u,
    0x1DB71064u, 0x6AB020F2u, 0xF3B97148u, 0x84BE41DEu, 0x1ADAD47Du, 0x6DDDE4EBu, 0xF4D4B551u, 0x83D385C7u,
    0x136C9856u, 0x646BA8C0u, 0xFD62F97Au, 0x8A65C9ECu, 0x14015C4Fu, 0x63066CD9u, 0xFA0F3D63u, 0x8D080DF5u,
    0x3B6E20C8u, 0x4C69105Eu, 0xD56041E4u, 0xA2677172u, 0x3C03E4D1u, 0x4B04D447u, 0xD20D85FDu, 0xA50AB56Bu,
    0x35B5A8FAu, 0x42B2986Cu, 0xDBBBC9D6u, 0xACBCF940u, 0x32D86CE3u, 0x45DF5C75u, 0xDCD60DCFu, 0xABD13D59u,
    0x26D930ACu, 0x51DE003Au, 0xC8D75180u, 0xBFD06116u, 0x21B4F4B5u, 0x56B3C423u, 0xCFBA9599u, 0xB8BDA50Fu,
    0x2802B89Eu, 0x5F058808u, 0xC60CD9B2u, 0xB10BE924u, 0x2F6F7C87u, 0x58684C11u, 0xC1611DABu, 0xB6662D3Du,
    0x76DC4190u, 0x01DB7106u, 0x98D220BCu, 0xEFD5102Au, 0x71B18589u, 0x06B6B51Fu, 0x9FBFE4A5u, 0xE8B8D433u,
    0x7807C9A2u, 0x0F00F934u, 0x9609A88Eu, 0xE10E9818u, 0x7F6A0DBBu, 0x086D3D2Du, 0x91646C97u, 0xE6635C01u,
    0x6B6B51F4u, 0x1C6C6162u, 0x856530D8u, 0xF262004Eu, 0x6C0695EDu, 0x1B01A57Bu, 0x8208F4C1u, 0xF50FC457u,
    0x65B0D9C6u, 0x12B7E950u, 0x8BBEB8EAu, 0xFCB9887Cu, 0x62DD1DDFu, 0x15DA2D49u, 0x8CD37CF3u, 0xFBD44C65u,
    0x4DB26158u, 0x3AB551CEu, 0xA3BC0074u, 0xD4BB30E2u, 0x4ADFA541u, 0x3DD895D7u, 0xA4D1C46Du, 0xD3D6F4FBu,
    0x4369E96Au, 0x346ED9FCu, 0xAD678846u, 0xDA60B8D0u, 0x44042D73u, 0x33031DE5u, 0xAA0A4C5Fu, 0xDD0D7CC9u,
    0x5005713Cu, 0x270241AAu, 0xBE0B1010u, 0xC90C2086u, 0x5768B525u, 0x206F85B3u, 0xB966D409u, 0xCE61E49Fu,
    0x5EDEF90Eu, 0x29D9C998u, 0xB0D09822u, 0xC7D7A8B4u, 0x59B33D17u, 0x2EB40D81u, 0xB7BD5C3Bu, 0xC0BA6CADu,
    0xEDB88320u, 0x9ABFB3B6u, 0x03B6E20Cu, 0x74B1D29Au, 0xEAD54739u, 0x9DD277AFu, 0x04DB2615u, 0x73DC1683u,
    0xE3630B12u, 0x94643B84u, 0x0D6D6A3Eu, 0x7A6A5AA8u, 0xE40ECF0Bu, 0x9309FF9Du, 0x0A00AE27u, 0x7D079EB1u,
    0xF00F9344u, 0x8708A3D2u, 0x1E01F268u, 0x6906C2FEu, 0xF762575Du, 0x806567CBu, 0x196C3671u, 0x6E6B06E7u,
    0xFED41B76u, 0x89D32BE0u, 0x10DA7A5Au, 0x67DD4ACCu, 0xF9B9DF6Fu, 0x8EBEEFF9u, 0x17B7BE43u, 0x60B08ED5u,
    0xD6D6A3E8u, 0xA1D1937Eu, 0x38D8C2C4u, 0x4FDFF252u, 0xD1BB67F1u, 0xA6BC5767u, 0x3FB506DDu, 0x48B2364Bu,
    0xD80D2BDAu, 0xAF0A1B4Cu, 0x36034AF6u, 0x41047A60u, 0xDF60EFC3u, 0xA867DF55u, 0x316E8EEFu, 0x4669BE79u,
    0xCB61B38Cu, 0xBC66831Au, 0x256FD2A0u, 0x5268E236u, 0xCC0C7795u, 0xBB0B4703u, 0x220216B9u, 0x5505262Fu,
    0xC5BA3BBEu, 0xB2BD0B28u, 0x2BB45A92u, 0x5CB36A04u, 0xC2D7FFA7u, 0xB5D0CF31u, 0x2CD99E8Bu, 0x5BDEAE1Du,
    0x9B64C2B0u, 0xEC63F226u, 0x756AA39Cu, 0x026D930Au, 0x9C0906A9u, 0xEB0E363Fu, 0x72076785u, 0x05005713u,
    0x95BF4A82u, 0xE2B87A14u, 0x7BB12BAEu, 0x0CB61B38u, 0x92D28E9Bu, 0xE5D5BE0Du, 0x7CDCEFB7u, 0x0BDBDF21u,
    0x86D3D2D4u, 0xF1D4E242u, 0x68DDB3F8u, 0x1FDA836Eu, 0x81BE16CDu, 0xF6B9265Bu, 0x6FB077E1u, 0x18B74777u,
    0x88085AE6u, 0xFF0F6A70u, 0x66063BCAu, 0x11010B5Cu, 0x8F659EFFu, 0xF862AE69u, 0x616BFFD3u, 0x166CCF45u,
    0xA00AE278u, 0xD70DD2EEu, 0x4E048354u, 0x3903B3C2u, 0xA7672661u, 0xD06016F7u, 0x4969474Du, 0x3E6E77DBu,
    0xAED16A4Au, 0xD9D65ADCu, 0x40DF0B66u, 0x37D83BF0u, 0xA9BCAE53u, 0xDEBB9EC5u, 0x47B2CF7Fu, 0x30B5FFE9u,
    0xBDBDF21Cu, 0xCABAC28Au, 0x53B39330u, 0x24B4A3A6u, 0xBAD03605u, 0xCDD70693u, 0x54DE5729u, 0x23D967BFu,
    0xB3667A2Eu, 0xC4614AB8u, 0x5D681B02u, 0x2A6F2B94u, 0xB40BBE37u, 0xC30C8EA1u, 0x5A05DF1Bu, 0x2D02EF8Du,
};

uint32_t pw_crc32(uint32_t crc, const void *data, size_t n)
{
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (n--) {
        crc = pw_crc_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    }
    return ~crc;
}

/* Little-endian stores byte by byte: correct on any host byte order and alignment. */
static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    /* IEEE-754 binary32 assumed (every MCU with an FPU, and soft-float ABIs) */
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Writes header + CRCs around a payload already placed at out + PW_HEADER_BYTES. */
static size_t finish_frame(uint8_t *out, uint8_t type, uint32_t seq, uint64_t sample_counter,
                           uint16_t payload_len)
{
    size_t end = PW_HEADER_BYTES + (size_t)payload_len;
    out[0] = PW_SYNC0;
    out[1] = PW_SYNC1;
    out[2] = PW_SYNC2;
    out[3] = PW_SYNC3;
    out[4] = PW_VERSION;
    out[5] = type;
    put16(out + 6, payload_len);
    put32(out + 8, seq);
    put64(out + 12, sample_counter);
    put32(out + 20, pw_crc32(0, out, 20));
    put32(out + end, pw_crc32(0, out, end));
    return end + PW_CRC_BYTES;
}

size_t pw_samples_frame_size(uint16_t n_channels, uint16_t n_samples)
{
    size_t payload = PW_SAMPLES_HEAD_BYTES + 2u * (size_t)n_channels * (size_t)n_samples;
    if (n_channels == 0 || n_samples == 0 || payload > PW_MAX_PAYLOAD) {
        return 0;
    }
    return PW_FRAME_OVERHEAD + payload;
}

/* The payload head both sample encodings share; returns where the samples go, or NULL
 * when the frame cannot be written (then *size is 0). */
static uint8_t *samples_head(uint8_t *out, size_t out_cap, uint16_t n_channels, uint16_t n_samples,
                             uint32_t sample_rate_hz, float scale_uv, const void *data, size_t *size)
{
    uint8_t *p;
    *size = pw_samples_frame_size(n_channels, n_samples);
    if (*size == 0 || out == NULL || data == NULL || out_cap < *size || !(scale_uv > 0.0f)) {
        *size = 0;
        return NULL;
    }
    p = out + PW_HEADER_BYTES;
    put16(p, n_channels);
    put16(p + 2, n_samples);
    put32(p + 4, sample_rate_hz);
    put32(p + 8, float_bits(scale_uv));
    return p + PW_SAMPLES_HEAD_BYTES;
}

size_t pw_encode_samples(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                         uint16_t n_channels, uint16_t n_samples, uint32_t sample_rate_hz,
                         float scale_uv, const int16_t *data)
{
    size_t size, i, count = (size_t)n_channels * (size_t)n_samples;
    uint8_t *p = samples_head(out, out_cap, n_channels, n_samples, sample_rate_hz, scale_uv, data, &size);
    if (p == NULL) {
        return 0;
    }
    for (i = 0; i < count; i++) {
        put16(p + 2 * i, (uint16_t)data[i]); /* two's complement, little-endian */
    }
    return finish_frame(out, PW_TYPE_SAMPLES, seq, sample_counter,
                        (uint16_t)(size - PW_FRAME_OVERHEAD));
}

uint16_t pw_half_from_float(float f)
{
    uint32_t x = float_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7FFFFFFFu;
    uint32_t h, rem, halfway, shift;
    if (ax > 0x7F800000u) {
        return (uint16_t)(sign | PW_HALF_NAN);
    }
    if (ax >= 0x477FF000u) { /* >= 65520 (and Inf) would round to Inf: saturate */
        return (uint16_t)(sign | PW_HALF_MAX);
    }
    if (ax >= 0x38800000u) { /* >= 2^-14: a normal binary16 */
        h = (ax - 0x38000000u) >> 13; /* rebias the exponent (127 -> 15), keep 10 mantissa bits */
        rem = ax & 0x1FFFu;           /* the 13 bits dropped */
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) {
            h++; /* a mantissa carry moves into the exponent, which is still correct */
        }
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) { /* <= 2^-25, half the smallest subnormal: rounds to (signed) 0 */
        return (uint16_t)sign;
    }
    /* a binary16 subnormal: value / 2^-24, rounded; shift is 14..24 */
    shift = 126u - (ax >> 23);
    x = (ax & 0x7FFFFFu) | 0x800000u;
    h = x >> shift;
    rem = x & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u))) {
        h++; /* 0x400 is the smallest normal: still correct */
    }
    return (uint16_t)(sign | h);
}

float pw_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = ((uint32_t)h >> 10) & 0x1Fu;
    uint32_t mant = (uint32_t)h & 0x3FFu;
    uint32_t bits;
    float f;
    if (exp == 0x1Fu) {
        bits = sign | 0x7F800000u | (mant << 13); /* Inf, NaN */
    } else if (exp != 0u) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0u) {
        bits = sign;
    } else { /* subnormal: normalise */
        exp = 113u;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

size_t pw_encode_samples_f16(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                             uint16_t n_channels, uint16_t n_samples, uint32_t sample_rate_hz,
                             float scale_uv, const float *data)
{
    size_t size, i, count = (size_t)n_channels * (size_t)n_samples;
    uint8_t *p = samples_head(out, out_cap, n_channels, n_samples, sample_rate_hz, scale_uv, data, &size);
    if (p == NULL) {
        return 0;
    }
    for (i = 0; i < count; i++) {
        if ((float_bits(data[i]) & 0x7FFFFFFFu) > 0x7F800000u) {
            return 0; /* NaN: the receiver would reject the frame */
        }
        put16(p + 2 * i, pw_half_from_float(data[i]));
    }
    return finish_frame(out, PW_TYPE_SAMPLES_F16, seq, sample_counter,
                        (uint16_t)(size - PW_FRAME_OVERHEAD));
}

size_t pw_encode_event_stim(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                            uint16_t electrode, uint32_t current_na)
{
    uint8_t *p;
    if (out == NULL || out_cap < PW_FRAME_OVERHEAD + PW_EVENT_PAYLOAD_BYTES) {
        return 0;
    }
    p = out + PW_HEADER_BYTES;
    put16(p, electrode);
    put16(p + 2, 0); /* reserved */
    put32(p + 4, current_na);
    return finish_frame(out, PW_TYPE_EVENT_STIM, seq, sample_counter, PW_EVENT_PAYLOAD_BYTES);
}

size_t pw_encode_status(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                        uint8_t state, uint16_t flags, uint32_t sample_rate_hz,
                        uint16_t n_channels, uint16_t frame_samples,
                        uint32_t device_dropped_frames, uint32_t boot_id)
{
    uint8_t *p;
    if (out == NULL || out_cap < PW_FRAME_OVERHEAD + PW_STATUS_PAYLOAD_BYTES) {
        return 0;
    }
    p = out + PW_HEADER_BYTES;
    p[0] = state;
    p[1] = 0; /* reserved */
    put16(p + 2, flags);
    put32(p + 4, sample_rate_hz);
    put16(p + 8, n_channels);
    put16(p + 10, frame_samples);
    put32(p + 12, device_dropped_frames);
    put32(p + 16, boot_id);
    return finish_frame(out, PW_TYPE_STATUS, seq, sample_counter, PW_STATUS_PAYLOAD_BYTES);
}

size_t pw_encode_stim_command(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                              uint32_t command_id, uint16_t electrode, uint16_t flags,
                              uint32_t current_na, uint32_t deadline_samples)
{
    uint8_t *p;
    if (out == NULL || out_cap < PW_FRAME_OVERHEAD + PW_COMMAND_PAYLOAD_BYTES
        || (flags & ~PW_CMD_AT_SAMPLE) != 0u) {
        return 0;
    }
    p = out + PW_HEADER_BYTES;
    put32(p, command_id);
    put16(p + 4, electrode);
    put16(p + 6, flags);
    put32(p + 8, current_na);
    put32(p + 12, deadline_samples);
    return finish_frame(out, PW_TYPE_STIM_COMMAND, seq, sample_counter, PW_COMMAND_PAYLOAD_BYTES);
}

size_t pw_encode_stim_ack(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                          uint32_t command_id, uint16_t electrode, uint8_t status,
                          uint32_t current_na)
{
    uint8_t *p;
    if (out == NULL || out_cap < PW_FRAME_OVERHEAD + PW_ACK_PAYLOAD_BYTES) {
        return 0;
    }
    p = out + PW_HEADER_BYTES;
    put32(p, command_id);
    put16(p + 4, electrode);
    p[6] = status;
    p[7] = 0; /* reserved */
    put32(p + 8, current_na);
    return finish_frame(out, PW_TYPE_STIM_ACK, seq, sample_counter, PW_ACK_PAYLOAD_BYTES);
}

/* The first position >= from where the sync pattern starts, or n if none does. */
static size_t find_sync(const uint8_t *buf, size_t n, size_t from)
{
    size_t i;
    for (i = from; i + 4u <= n; i++) {
        if (buf[i] == PW_SYNC0 && buf[i + 1] == PW_SYNC1 && buf[i + 2] == PW_SYNC2
            && buf[i + 3] == PW_SYNC3) {
            return i;
        }
    }
    return n;
}

int pw_scan(const uint8_t *buf, size_t n, size_t max_payload, pw_frame *frame, size_t *consumed,
            size_t *discarded)
{
    size_t pos = 0, skipped = 0, i, end;
    uint16_t len;
    int found = PW_SCAN_NEED_MORE;
    for (;;) {
        i = find_sync(buf, n, pos);
        if (i == n) { /* keep the last 3 bytes: a sync may be split across reads */
            size_t keep = n > pos + 3u ? n - 3u : pos;
            skipped += keep - pos;
            pos = keep;
            break;
        }
        skipped += i - pos;
        pos = i;
        if (n - pos < PW_HEADER_BYTES) {
            break;
        }
        len = get16(buf + pos + 6);
        if (pw_crc32(0, buf + pos, 20) != get32(buf + pos + 20) || len > max_payload) {
            skipped++;
            pos++;
            continue;
        }
        end = pos + PW_HEADER_BYTES + len + PW_CRC_BYTES;
        if (end > n) {
            break; /* the rest of this frame has not arrived */
        }
        if (pw_crc32(0, buf + pos, end - PW_CRC_BYTES - pos) != get32(buf + end - PW_CRC_BYTES)) {
            skipped++;
            pos++;
            continue;
        }
        frame->version = buf[pos + 4];
        frame->type = buf[pos + 5];
        frame->payload_len = len;
        frame->seq = get32(buf + pos + 8);
        frame->sample_counter = get64(buf + pos + 12);
        frame->payload = buf + pos + PW_HEADER_BYTES;
        pos = end;
        found = PW_SCAN_FRAME;
        break;
    }
    *consumed = pos;
    if (discarded != NULL) {
        *discarded += skipped;
    }
    return found;
}

/* A frame of this version, type and payload length (the stimulation frames' fixed layouts). */
static int is_frame(const pw_frame *frame, uint8_t type, uint16_t payload_len)
{
    return frame->version == PW_VERSION && frame->type == type && frame->payload_len == payload_len;
}

int pw_decode_stim_command(const pw_frame *frame, pw_stim_command *cmd)
{
    const uint8_t *p = frame->payload;
    if (!is_frame(frame, PW_TYPE_STIM_COMMAND, PW_COMMAND_PAYLOAD_BYTES)) {
        return -1;
    }
    cmd->seq = frame->seq;
    cmd->sample_counter = frame->sample_counter;
    cmd->command_id = get32(p);
    cmd->electrode = get16(p + 4);
    cmd->flags = get16(p + 6);
    cmd->current_na = get32(p + 8);
    cmd->deadline_samples = get32(p + 12);
    return (cmd->flags & ~PW_CMD_AT_SAMPLE) == 0u ? 0 : -1; /* an unknown flag: never guess */
}

int pw_decode_stim_ack(const pw_frame *frame, pw_stim_ack *ack)
{
    const uint8_t *p = frame->payload;
    if (!is_frame(frame, PW_TYPE_STIM_ACK, PW_ACK_PAYLOAD_BYTES)) {
        return -1;
    }
    ack->seq = frame->seq;
    ack->sample_counter = frame->sample_counter;
    ack->command_id = get32(p);
    ack->electrode = get16(p + 4);
    ack->status = p[6];
    ack->current_na = get32(p + 8);
    return 0;
}
