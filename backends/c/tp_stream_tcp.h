/* Host-only byte stream over TCP (POSIX sockets) for the remote storage driver. */
#ifndef TP_STREAM_TCP_H
#define TP_STREAM_TCP_H

#include "tp_storage.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char *host; /* dotted IPv4, e.g. "127.0.0.1" */
  uint16_t port;
  int fd;
  uint32_t reconnects;
} tp_tcp_stream;

int tp_tcp_stream_open(tp_byte_stream *io, tp_tcp_stream *t, const char *host, uint16_t port);
void tp_tcp_stream_close(tp_tcp_stream *t);

#ifdef __cplusplus
}
#endif

#endif /* TP_STREAM_TCP_H */
