/* phosphene_wire.h: C99 reference encoder for the phosphene wire protocol, version 1,
 * and the decoder a device needs for the host's STIM_COMMAND frames.
 *
 * Dependency-free (stdint.h, stddef.h, string.h only), no allocation, no globals.
 * docs/protocol.md is the specification; this file and the Python decoder both pass
 * its test vectors byte for byte.
 *
 * Every encoder writes one complete frame into `out` (capacity `out_cap` bytes) and
 * returns its length, or 0 if `out_cap` is too small or an argument is out of range.
 * The caller owns the sequence number: one counter over all frame types, starting at
 * 0 after boot, +1 per frame (wrapping at 2^32). The first frame after boot should be
 * a STATUS frame with PW_FLAG_BOOT.
 */
#ifndef PHOSPHENE_WIRE_H
#define PHOSPHENE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PW_SYNC0 0xA5u
#define PW_SYNC1 0xC3u
#define PW_SYNC2 0x9Eu
#define PW_SYNC3 0xD1u
#define PW_VERSION 1u
#define PW_HEADER_BYTES 24u
#define PW_CRC_BYTES 4u
#define PW_FRAME_OVERHEAD (PW_HEADER_BYTES + PW_CRC_BYTES)
#define PW_MAX_PAYLOAD 65535u
#define PW_SAMPLES_HEAD_BYTES 12u
#define PW_EVENT_PAYLOAD_BYTES 8u
#define PW_STATUS_PAYLOAD_BYTES 20u
#define PW_COMMAND_PAYLOAD_BYTES 16u
#define PW_ACK_PAYLOAD_BYTES 12u

/* frame types (header byte 5) */
#define PW_TYPE_SAMPLES 1u     /* int16 samples */
#define PW_TYPE_EVENT_STIM 2u
#define PW_TYPE_STATUS 3u
#define PW_TYPE_SAMPLES_F16 4u /* IEEE-754 binary16 samples, same payload layout */
#define PW_TYPE_STIM_COMMAND 5u /* host -> device */
#define PW_TYPE_STIM_ACK 6u     /* device -> host */

/* STIM_COMMAND.flags */
#define PW_CMD_AT_SAMPLE 0x0001u /* deliver at the header's sample_counter (else: now) */

/* STIM_ACK.status */
#define PW_ACK_DELIVERED 0u
#define PW_ACK_EXPIRED 1u       /* past its deadline, or its requested sample had passed */
#define PW_ACK_INVALID 2u       /* no such electrode, or a current out of range */
#define PW_ACK_BUSY 3u          /* still in the previous stimulation's artifact period */
#define PW_ACK_UNAVAILABLE 4u  /* cannot stimulate now: not acquiring, or disarmed */

/* binary16 bit patterns */
#define PW_HALF_MAX 0x7BFFu /* 65504, the largest finite binary16 */
#define PW_HALF_NAN 0x7E00u

/* STATUS.state */
#define PW_STATE_IDLE 0u
#define PW_STATE_STREAMING 1u
#define PW_STATE_STOPPED 2u
#define PW_STATE_ERROR 3u

/* STATUS.flags */
#define PW_FLAG_BOOT 0x0001u
#define PW_FLAG_ADC_OVERRUN 0x0002u
#define PW_FLAG_TX_OVERFLOW 0x0004u
#define PW_FLAG_STIM_ARMED 0x0008u

/* Bytes of a SAMPLES frame with n_channels x n_samples (0 if the payload would not fit). */
size_t pw_samples_frame_size(uint16_t n_channels, uint16_t n_samples);

/* CRC-32 (IEEE 802.3 / zlib: reflected poly 0xEDB88320, init and final XOR 0xFFFFFFFF).
 * Chainable like zlib: crc = pw_crc32(0, a, na); crc = pw_crc32(crc, b, nb). */
uint32_t pw_crc32(uint32_t crc, const void *data, size_t n);

/* SAMPLES: data is [n_samples][n_channels] int16 (sample-major, as an ADC scans);
 * sample_counter is the device counter of data[0]; value_uv = data * scale_uv. */
size_t pw_encode_samples(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                         uint16_t n_channels, uint16_t n_samples, uint32_t sample_rate_hz,
                         float scale_uv, const int16_t *data);

/* SAMPLES_F16: data is [n_samples][n_channels] float (sample-major), in units of scale_uv
 * (scale_uv = 1.0f: data are microvolts); each value is rounded to the nearest binary16
 * (ties to even) and magnitudes beyond 65504 (and +-Inf) saturate to +-65504. Returns 0,
 * sending nothing, if any value is NaN (or on the same errors as pw_encode_samples).
 * The frame is the size of the int16 one: pw_samples_frame_size. */
size_t pw_encode_samples_f16(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                             uint16_t n_channels, uint16_t n_samples, uint32_t sample_rate_hz,
                             float scale_uv, const float *data);

/* float -> binary16 bits, round to nearest, ties to even, with the saturation above;
 * NaN -> PW_HALF_NAN. Integer bit manipulation only (no _Float16 / __fp16 needed). */
uint16_t pw_half_from_float(float f);

/* binary16 bits -> float (exact; for receivers): value_uv = pw_half_to_float(h) * scale_uv. */
float pw_half_to_float(uint16_t h);

/* EVENT_STIM: sample_counter is the onset sample; current in integer nanoamps. */
size_t pw_encode_event_stim(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                            uint16_t electrode, uint32_t current_na);

/* STATUS: device state, flags, stream format, the device's own dropped-frame count and a
 * boot id that differs between consecutive boots. */
size_t pw_encode_status(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                        uint8_t state, uint16_t flags, uint32_t sample_rate_hz,
                        uint16_t n_channels, uint16_t frame_samples,
                        uint32_t device_dropped_frames, uint32_t boot_id);

/* STIM_COMMAND (host -> device). seq: the host's own command counter. flags 0 ("now"):
 * sample_counter is the newest device sample the host had seen when it decided, and the
 * device refuses (PW_ACK_EXPIRED) to deliver more than deadline_samples after it (0: no
 * deadline). flags PW_CMD_AT_SAMPLE: deliver at sample_counter exactly. */
size_t pw_encode_stim_command(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                              uint32_t command_id, uint16_t electrode, uint16_t flags,
                              uint32_t current_na, uint32_t deadline_samples);

/* STIM_ACK (device -> host), one per STIM_COMMAND received intact: sample_counter is the
 * delivered onset sample (status PW_ACK_DELIVERED) or the device's sample at the refusal.
 * Sent before the samples frame holding the onset, like EVENT_STIM. */
size_t pw_encode_stim_ack(uint8_t *out, size_t out_cap, uint32_t seq, uint64_t sample_counter,
                          uint32_t command_id, uint16_t electrode, uint8_t status,
                          uint32_t current_na);

/* --- decoding (what a device runs on the bytes the host sends) ------------------------ */

/* An intact frame found in a buffer; payload points into that buffer. */
typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t payload_len;
    uint32_t seq;
    uint64_t sample_counter;
    const uint8_t *payload;
} pw_frame;

typedef struct {
    uint32_t seq;
    uint64_t sample_counter;
    uint32_t command_id;
    uint16_t electrode;
    uint16_t flags;
    uint32_t current_na;
    uint32_t deadline_samples;
} pw_stim_command;

typedef struct {
    uint32_t seq;
    uint64_t sample_counter;
    uint32_t command_id;
    uint16_t electrode;
    uint8_t status;
    uint32_t current_na;
} pw_stim_ack;

#define PW_SCAN_FRAME 1     /* *frame is an intact frame ending at buf + *consumed */
#define PW_SCAN_NEED_MORE 0 /* no complete frame: drop *consumed bytes, append more, call again */

/* Finds the next intact frame in buf[0..n) with the receiver algorithm of docs/protocol.md:
 * search the sync, check header_crc, refuse payload_len > max_payload (a device that only
 * takes commands passes PW_COMMAND_PAYLOAD_BYTES and needs a buffer of 44 bytes + what it
 * reads at once), check frame_crc; on a failed check skip one byte and search again.
 * *consumed is how many leading bytes are done with (the frame included, on
 * PW_SCAN_FRAME); *discarded (if not NULL) is increased by the bytes skipped as no frame. */
int pw_scan(const uint8_t *buf, size_t n, size_t max_payload, pw_frame *frame, size_t *consumed,
            size_t *discarded);

/* The fields of an intact frame's payload: 0 on success, -1 if it is another type or its
 * payload has the wrong length (or, for a command, an unknown flag). */
int pw_decode_stim_command(const pw_frame *frame, pw_stim_command *cmd);
int pw_decode_stim_ack(const pw_frame *frame, pw_stim_ack *ack);

#ifdef __cplusplus
}
#endif

#endif /* PHOSPHENE_WIRE_H */
