/* LD_PRELOAD shim: every IPv4/IPv6 bind() goes to the loopback address.
 *
 * Orthanc 1.10 has no bind-address option and listens on all interfaces;
 * benchmarks/_servers.py compiles this file with gcc and preloads it so the
 * Orthanc it starts is reachable from 127.0.0.1 only, without a socat bridge
 * that would cost Orthanc throughput.  The port is left as asked.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *address, socklen_t length)
{
    static bind_function real_bind;
    if (real_bind == NULL)
        real_bind = (bind_function)dlsym(RTLD_NEXT, "bind");
    if (address != NULL && address->sa_family == AF_INET && length >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in loopback;
        memcpy(&loopback, address, sizeof loopback);
        loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return real_bind(fd, (const struct sockaddr *)&loopback, sizeof loopback);
    }
    if (address != NULL && address->sa_family == AF_INET6 && length >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 loopback;
        memcpy(&loopback, address, sizeof loopback);
        loopback.sin6_addr = in6addr_loopback;
        return real_bind(fd, (const struct sockaddr *)&loopback, sizeof loopback);
    }
    return real_bind(fd, address, length);
}
