/* test_wire.c: host test program for phosphene_wire (POSIX; the encoder itself is C99).
 *
 *   test_wire vectors                      print the docs/protocol.md test vectors as
 *                                          "name hex" lines
 *   test_wire stream PATH N [CH [NS]]      write a BOOT status, N SAMPLES frames of
 *                                          CH channels x NS samples (default 96 x 16),
 *                                          an EVENT_STIM every 10th frame, and a closing
 *                                          STOPPED status to PATH (a file or a tty/pty)
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

static int stream(const char *path, long n_frames, unsigned n_channels, unsigned n_samples)
{
    size_t cap = pw_samples_frame_size((uint16_t)n_channels, (uint16_t)n_samples);
    uint8_t *buf;
    int16_t *data;
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
    if (buf == NULL || data == NULL) return 1;

    n = pw_encode_status(buf, cap + 64, seq++, counter, PW_STATE_STREAMING, PW_FLAG_BOOT, 1000u,
                         (uint16_t)n_channels, (uint16_t)n_samples, 0u, 1u);
    if (write_all(fd, buf, n)) goto fail;
    for (k = 0; k < n_frames; k++) {
        if (k % 10 == 5) {
            n = pw_encode_event_stim(buf, cap + 64, seq++, counter + 3u, (uint16_t)(k % 96 + 1),
                                     (uint32_t)(1000 * (k % 80 + 1)));
            if (write_all(fd, buf, n)) goto fail;
        }
        for (i = 0; i < (size_t)n_channels * n_samples; i++) {
            data[i] = (int16_t)((long)((k * 7919 + (long)i * 31) % 4001) - 2000);
        }
        n = pw_encode_samples(buf, cap, seq++, counter, (uint16_t)n_channels, (uint16_t)n_samples,
                              1000u, 0.02f, data);
        if (write_all(fd, buf, n)) goto fail;
        counter += n_samples;
    }
    n = pw_encode_status(buf, cap + 64, seq++, counter, PW_STATE_STOPPED, 0u, 1000u,
                         (uint16_t)n_channels, (uint16_t)n_samples, 0u, 1u);
    if (write_all(fd, buf, n)) goto fail;
    free(buf);
    free(data);
    return close(fd) == 0 ? 0 : 1;
fail:
    fprintf(stderr, "write to %s failed: %s\n", path, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "vectors") == 0) {
        return vectors();
    }
    if (argc >= 4 && strcmp(argv[1], "stream") == 0) {
        unsigned ch = argc >= 5 ? (unsigned)strtoul(argv[4], NULL, 10) : 96u;
        unsigned ns = argc >= 6 ? (unsigned)strtoul(argv[5], NULL, 10) : 16u;
        return stream(argv[2], strtol(argv[3], NULL, 10), ch, ns);
    }
    fprintf(stderr, "usage: %s vectors | stream PATH N_FRAMES [CHANNELS [SAMPLES]]\n", argv[0]);
    return 2;
}
