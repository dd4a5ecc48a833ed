/* test_wire.c: host test program for phosphene_wire (POSIX; the encoder itself is C99).
 *
 *   test_wire vectors                      print the docs/protocol.md test vectors as
 *                                          "name hex" lines
 *   test_wire stream [-f] [-b BOOT_ID] [-s SEED] PATH N [CH [NS]]
 *                                          write a BOOT status, N SAMPLES frames of
 *                                          CH channels x NS samples (default 96 x 16),
 *                                          an EVENT_STIM every 10th frame, and a closing
 *                                          STOPPED status to PATH (a file or a tty/pty).
 *                                          -f: SAMPLES_F16 frames. BOOT_ID and SEED (of
 *                                          the sample values) default to random, so each
 *                                          run is a new boot; both are printed on stderr.
 *   test_wire f16 IN CH NS SCALE           read float32 (little-endian) values from IN,
 *                                          write SAMPLES_F16 frames of CH x NS of them
 *                                          (seq 0, 1, ...; sample_counter seq * NS; 1000 Hz)
 *                                          to stdout; exit 3 if the encoder refuses one
 *   test_wire half2float                   write pw_half_to_float of all 65536 bit
 *                                          patterns as float32 (little-endian) to stdout
 *   test_wire scan MAX_PAYLOAD CHUNK       read a byte stream on stdin CHUNK bytes at a
 *                                          time through pw_scan (as a device reads the
 *                                          host's commands) and print each intact frame
 *                                          ("frame TYPE SEQ COUNTER LEN", then "command
 *                                          ..." or "ack ..." for those types), then
 *                                          "discarded N buffered M"
 *
 * Build: cc -std=c99 -Wall -Wextra -O2 -o test_wire test_wire.c phosphene_wire.c
 */
#define _POSIX_C_SOURCE 200809L
#include "phosphene_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static void print_hex(const char *name, const uint8_t *p, size_t n)
{
    size_t i;
    printf("%s ", name);
    for (i = 0; i < n; i++) {
        printf("%02x", p[i]);
    }
    printf("\n");
}

static int vectors(void)
{
    uint8_t buf[256];
    size_t n;
    const int16_t samples[6] = {1, -1, 2, -2, 32767, -32768};
    const int16_t wrap[4] = {-1, 0, 1, 1000};
    /* 1, -2.5, 0.1 (rounds to 0x2E66), -0, 65504, 2^-24 (the smallest subnormal) */
    const float halves[6] = {1.0f, -2.5f, 0.1f, -0.0f, 65504.0f, 5.9604644775390625e-8f};
    float nan_pair[2];
    uint32_t nan_bits = 0x7FC00000u;
    memcpy(&nan_pair[0], &nan_bits, sizeof nan_bits);
    nan_pair[1] = 1.0f;

    n = pw_encode_samples(buf, sizeof buf, 0u, 0u, 2u, 3u, 1000u, 0.25f, samples);
    if (n == 0) return 1;
    print_hex("samples", buf, n);
    n = pw_encode_event_stim(buf, sizeof buf, 1u, 170u, 42u, 2500u);
    if (n == 0) return 1;
    print_hex("event_stim", buf, n);
    n = pw_encode_status(buf, sizeof buf, 0u, 0u, PW_STATE_STREAMING, PW_FLAG_BOOT, 1000u, 96u, 16u,
                         0u, 0x12345678u);
    if (n == 0) return 1;
    print_hex("status_boot", buf, n);
    n = pw_encode_samples(buf, sizeof buf, 0xFFFFFFFFu, (uint64_t)1 << 40, 4u, 1u, 30000u, 0.02f, wrap);
    if (n == 0) return 1;
    print_hex("samples_wrap", buf, n);
    n = pw_encode_samples_f16(buf, sizeof buf, 7u, 160u, 2u, 3u, 1000u, 1.0f, halves);
    if (n == 0) return 1;
    print_hex("samples_f16", buf, n);
    n = pw_encode_stim_command(buf, sizeof buf, 3u, 5000u, 7u, 25u, 0u, 12345u, 20u);
    if (n == 0) return 1;
    print_hex("stim_command", buf, n);
    n = pw_encode_stim_command(buf, sizeof buf, 4u, ((uint64_t)1 << 33) + 16u, 0xFFFFFFFFu, 96u,
                               PW_CMD_AT_SAMPLE, 80000u, 0u);
    if (n == 0) return 1;
    print_hex("stim_command_at", buf, n);
    n = pw_encode_stim_ack(buf, sizeof buf, 9u, 5003u, 7u, 25u, PW_ACK_DELIVERED, 12345u);
    if (n == 0) return 1;
    print_hex("stim_ack", buf, n);
    n = pw_encode_stim_ack(buf, sizeof buf, 10u, 6000u, 8u, 25u, PW_ACK_EXPIRED, 12345u);
    if (n == 0) return 1;
    print_hex("stim_ack_expired", buf, n);
    /* an unknown command flag is refused by the encoder */
    printf("command_bad_flag %lu\n", (unsigned long)pw_encode_stim_command(buf, sizeof buf, 0u, 0u, 1u,
                                                                          1u, 0x0002u, 1u, 0u));
    /* a NaN sample: refused (0), nothing to send */
    printf("f16_nan %lu\n", (unsigned long)pw_encode_samples_f16(buf, sizeof buf, 0u, 0u, 2u, 1u, 1000u,
                                                                 1.0f, nan_pair));
    /* CRC check value of the CRC-32 catalogue: crc32("123456789") = cbf43926 */
    printf("crc32_check %08lx\n", (unsigned long)pw_crc32(0, "123456789", 9));
    /* the largest 96-channel frame, and one sample more (does not fit: 0) */
    printf("limits %lu %lu\n", (unsigned long)pw_samples_frame_size(96u, 341u),
           (unsigned long)pw_samples_frame_size(96u, 342u));
    /* encoders refuse a buffer that is too small */
    printf("small_buffer %lu\n", (unsigned long)pw_encode_event_stim(buf, 35u, 0u, 0u, 1u, 1u));
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 32 random bits for a boot id or a seed: /dev/urandom, else the clock and the pid. */
static uint32_t random_u32(void)
{
    uint32_t v = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        ssize_t r = read(fd, &v, sizeof v);
        close(fd);
        if (r == (ssize_t)sizeof v) return v;
    }
    return (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16) ^ (uint32_t)clock();
}

/* sample i of frame k: ((k * 7919 + i * 31 + seed) mod 4001) - 2000 (int16 frames), or
 * that divided by 7 as a float (float16 frames, so the encoder has to round) */
static long sample_value(long k, size_t i, uint32_t seed)
{
    return (long)(((uint64_t)k * 7919u + (uint64_t)i * 31u + seed) % 4001u) - 2000;
}

static int stream(const char *path, long n_frames, unsigned n_channels, unsigned n_samples,
                  int f16, uint32_t boot_id, uint32_t seed)
{
    size_t cap = pw_samples_frame_size((uint16_t)n_channels, (uint16_t)n_samples);
    uint8_t *buf;
    int16_t *data;
    float *data_f;
    uint32_t seq = 0;
    uint64_t counter = 0;
    long k;
    size_t i, n;
    int fd;

    if (cap == 0 || n_frames < 0) {
        fprintf(stderr, "bad frame geometry %u x %u\n", n_channels, n_samples);
        return 2;
    }
    fd = open(path, O_WRONLY | O_NOCTTY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (isatty(fd)) { /* raw: no CR/LF translation of binary frames */
        struct termios t;
        if (tcgetattr(fd, &t) == 0) {
            t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
            t.c_oflag &= ~(tcflag_t)OPOST;
            t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
            t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
            t.c_cflag |= CS8;
            tcsetattr(fd, TCSANOW, &t);
        }
    }
    buf = malloc(cap + 64);
    data = malloc(sizeof(int16_t) * n_channels * n_samples);
    data_f = malloc(sizeof(float) * n_channels * n_samples);
    if (buf == NULL || data == NULL || data_f == NULL) return 1;
    fprintf(stderr, "boot_id %lu seed %lu\n", (unsigned long)boot_id, (unsigned long)seed);

    n = pw_encode_status(buf, cap + 64, seq++, counter, PW_STATE_STREAMING, PW_FLAG_BOOT, 1000u,
                         (uint16_t)n_channels, (uint16_t)n_samples, 0u, boot_id);
    if (write_all(fd, buf, n)) goto fail;
    for (k = 0; k < n_frames; k++) {
        if (k % 10 == 5) {
            n = pw_encode_event_stim(buf, cap + 64, seq++, counter + 3u, (uint16_t)(k % 96 + 1),
                                     (uint32_t)(1000 * (k % 80 + 1)));
            if (write_all(fd, buf, n)) goto fail;
        }
        for (i = 0; i < (size_t)n_channels * n_samples; i++) {
            data[i] = (int16_t)sample_value(k, i, seed);
            data_f[i] = (float)data[i] / 7.0f;
        }
        if (f16) {
            n = pw_encode_samples_f16(buf, cap, seq++, counter, (uint16_t)n_channels,
                                      (uint16_t)n_samples, 1000u, 1.0f, data_f);
        } else {
            n = pw_encode_samples(buf, cap, seq++, counter, (uint16_t)n_channels,
                                  (uint16_t)n_samples, 1000u, 0.02f, data);
        }
        if (n == 0 || write_all(fd, buf, n)) goto fail;
        counter += n_samples;
    }
    n = pw_encode_status(buf, cap + 64, seq++, counter, PW_STATE_STOPPED, 0u, 1000u,
                         (uint16_t)n_channels, (uint16_t)n_samples, 0u, boot_id);
    if (write_all(fd, buf, n)) goto fail;
    free(buf);
    free(data);
    free(data_f);
    return close(fd) == 0 ? 0 : 1;
fail:
    fprintf(stderr, "write to %s failed: %s\n", path, strerror(errno));
    return 1;
}

/* SAMPLES_F16 frames of the float32 values in `in_path`, to stdout. */
static int f16_frames(const char *in_path, unsigned n_channels, unsigned n_samples, float scale_uv)
{
    size_t per = (size_t)n_channels * n_samples;
    size_t cap = pw_samples_frame_size((uint16_t)n_channels, (uint16_t)n_samples);
    uint8_t raw[4], *buf;
    float *data;
    uint32_t seq = 0;
    size_t i = 0, n;
    FILE *in;
    int done = 0;

    if (cap == 0) {
        fprintf(stderr, "bad frame geometry %u x %u\n", n_channels, n_samples);
        return 2;
    }
    in = fopen(in_path, "rb");
    buf = malloc(cap);
    data = malloc(sizeof(float) * per);
    if (in == NULL || buf == NULL || data == NULL) {
        fprintf(stderr, "cannot read %s\n", in_path);
        return 1;
    }
    while (!done) {
        for (i = 0; i < per; i++) {
            uint32_t u;
            if (fread(raw, 1, 4, in) != 4) {
                done = 1;
                break;
            }
            u = (uint32_t)raw[0] | (uint32_t)raw[1] << 8 | (uint32_t)raw[2] << 16 | (uint32_t)raw[3] << 24;
            memcpy(&data[i], &u, sizeof u);
        }
        if (i < per) break; /* a partial frame at the end is not sent */
        n = pw_encode_samples_f16(buf, cap, seq, (uint64_t)seq * n_samples, (uint16_t)n_channels,
                                  (uint16_t)n_samples, 1000u, scale_uv, data);
        if (n == 0) {
            fprintf(stderr, "frame %lu refused by the encoder\n", (unsigned long)seq);
            return 3;
        }
        fwrite(buf, 1, n, stdout);
        seq++;
    }
    fclose(in);
    free(buf);
    free(data);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* The device's receive loop: bytes in CHUNK-sized reads, pw_scan, one line per frame. */
static int scan(size_t max_payload, size_t chunk)
{
    size_t cap = PW_FRAME_OVERHEAD + max_payload + chunk;
    uint8_t *buf = malloc(cap);
    size_t have = 0, consumed, discarded = 0, got;
    pw_frame f;
    pw_stim_command cmd;
    pw_stim_ack ack;
    if (buf == NULL || chunk == 0 || max_payload > PW_MAX_PAYLOAD) return 2;
    for (;;) {
        got = fread(buf + have, 1, chunk, stdin);
        have += got;
        for (;;) {
            int r = pw_scan(buf, have, max_payload, &f, &consumed, &discarded);
            if (r == PW_SCAN_FRAME) {
                printf("frame %u %lu %llu %u\n", f.type, (unsigned long)f.seq,
                       (unsigned long long)f.sample_counter, f.payload_len);
                if (f.type == PW_TYPE_STIM_COMMAND) {
                    if (pw_decode_stim_command(&f, &cmd) == 0) {
                        printf("command %lu %u %u %lu %lu\n", (unsigned long)cmd.command_id,
                               cmd.electrode, cmd.flags, (unsigned long)cmd.current_na,
                               (unsigned long)cmd.deadline_samples);
                    } else {
                        printf("command invalid\n");
                    }
                } else if (f.type == PW_TYPE_STIM_ACK) {
                    if (pw_decode_stim_ack(&f, &ack) == 0) {
                        printf("ack %lu %u %u %lu\n", (unsigned long)ack.command_id, ack.electrode,
                               ack.status, (unsigned long)ack.current_na);
                    } else {
                        printf("ack invalid\n");
                    }
                }
            }
            memmove(buf, buf + consumed, have - consumed);
            have -= consumed;
            if (r != PW_SCAN_FRAME) break;
        }
        if (got < chunk) break; /* end of input */
    }
    printf("discarded %lu buffered %lu\n", (unsigned long)discarded, (unsigned long)have);
    free(buf);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int half2float(void)
{
    uint32_t h;
    for (h = 0; h < 65536u; h++) {
        float f = pw_half_to_float((uint16_t)h);
        uint32_t u;
        uint8_t b[4];
        memcpy(&u, &f, sizeof u);
        b[0] = (uint8_t)u;
        b[1] = (uint8_t)(u >> 8);
        b[2] = (uint8_t)(u >> 16);
        b[3] = (uint8_t)(u >> 24);
        fwrite(b, 1, 4, stdout);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "vectors") == 0) {
        return vectors();
    }
    if (argc >= 2 && strcmp(argv[1], "stream") == 0) {
        int opt, f16 = 0;
        uint32_t boot_id = random_u32(), seed = random_u32();
        unsigned ch, ns;
        optind = 2;
        while ((opt = getopt(argc, argv, "fb:s:")) != -1) {
            if (opt == 'f') f16 = 1;
            else if (opt == 'b') boot_id = (uint32_t)strtoul(optarg, NULL, 0);
            else if (opt == 's') seed = (uint32_t)strtoul(optarg, NULL, 0);
            else return 2;
        }
        if (argc - optind >= 2) {
            ch = argc - optind >= 3 ? (unsigned)strtoul(argv[optind + 2], NULL, 10) : 96u;
            ns = argc - optind >= 4 ? (unsigned)strtoul(argv[optind + 3], NULL, 10) : 16u;
            return stream(argv[optind], strtol(argv[optind + 1], NULL, 10), ch, ns, f16, boot_id,
                          seed);
        }
    }
    if (argc == 6 && strcmp(argv[1], "f16") == 0) {
        return f16_frames(argv[2], (unsigned)strtoul(argv[3], NULL, 10),
                          (unsigned)strtoul(argv[4], NULL, 10), strtof(argv[5], NULL));
    }
    if (argc == 2 && strcmp(argv[1], "half2float") == 0) {
        return half2float();
    }
    if (argc == 4 && strcmp(argv[1], "scan") == 0) {
        return scan((size_t)strtoul(argv[2], NULL, 10), (size_t)strtoul(argv[3], NULL, 10));
    }
    fprintf(stderr, "usage: %s vectors | stream [-f] [-b BOOT_ID] [-s SEED] PATH N_FRAMES "
            "[CHANNELS [SAMPLES]] | f16 IN CHANNELS SAMPLES SCALE | half2float | "
            "scan MAX_PAYLOAD CHUNK\n", argv[0]);
    return 2;
}
