/* Host byte stream over a TCP socket, for the remote driver against `python -m planner
 * storage-host --tcp`. POSIX only; on a device the byte stream is a UART driver. */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200112L
#include "tp_stream_tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int connect_socket(tp_tcp_stream *t) {
  struct sockaddr_in addr;
  int one = 1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return TP_EIO;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons(t->port);
  if (inet_pton(AF_INET, t->host, &addr.sin_addr) != 1 ||
      connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    close(fd);
    return TP_EIO;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  t->fd = fd;
  return TP_OK;
}

static int tcp_send(void *ctx, const uint8_t *src, uint32_t n) {
  tp_tcp_stream *t = (tp_tcp_stream *)ctx;
  while (n > 0) {
    ssize_t k;
    if (t->fd < 0) return TP_EIO;
    k = send(t->fd, src, n, 0);
    if (k <= 0) return TP_EIO;
    src += k;
    n -= (uint32_t)k;
  }
  return TP_OK;
}

static int32_t tcp_recv(void *ctx, uint8_t *dst, uint32_t n, uint32_t timeout_ms) {
  tp_tcp_stream *t = (tp_tcp_stream *)ctx;
  struct pollfd p;
  ssize_t k;
  if (t->fd < 0) return TP_EIO;
  p.fd = t->fd;
  p.events = POLLIN;
  p.revents = 0;
  if (poll(&p, 1, (int)timeout_ms) <= 0) return 0;
  k = recv(t->fd, dst, n, 0);
  return k > 0 ? (int32_t)k : TP_EIO;
}

static int tcp_reset(void *ctx) {
  tp_tcp_stream *t = (tp_tcp_stream *)ctx;
  if (t->fd >= 0) close(t->fd);
  t->fd = -1;
  t->reconnects++;
  return connect_socket(t);
}

int tp_tcp_stream_open(tp_byte_stream *io, tp_tcp_stream *t, const char *host,
                       uint16_t port) {
  t->host = host;
  t->port = port;
  t->fd = -1;
  t->reconnects = 0;
  io->send = tcp_send;
  io->recv = tcp_recv;
  io->reset = tcp_reset;
  io->ctx = t;
  return connect_socket(t);
}

void tp_tcp_stream_close(tp_tcp_stream *t) {
  if (t->fd >= 0) close(t->fd);
  t->fd = -1;
}
#else
typedef int tp_stream_tcp_unavailable;
#endif
