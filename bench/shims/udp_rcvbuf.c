/*
 * LD_PRELOAD shim for an A/B in bench/capacity.py (target "1node+rcvbuf"):
 * the UDP sockets of the process get a 4 MiB receive buffer (SO_RCVBUFFORCE
 * as root, else SO_RCVBUF up to net.core.rmem_max), also when the program
 * asks for less (aioice asks for 256 KiB on every ICE host socket, which the
 * kernel doubles to 512 KiB).
 *
 * Why: on a busy 2-core machine AhoyConference's single thread sometimes does
 * not run for a few hundred ms and its sockets overflow (bench/RESULTS.md,
 * the capacity section).  This measures what a larger buffer would change,
 * without touching the server's code.
 *
 * Build: gcc -shared -fPIC -O2 -o udp_rcvbuf.so udp_rcvbuf.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>

#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif

#define WANTED (4 << 20)

static int (*real_setsockopt)(int, int, int, const void *, socklen_t);

static int is_udp(int fd) {
	int type = 0;
	socklen_t len = sizeof(type);
	return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_DGRAM;
}

static void grow(int fd) {
	int size = WANTED;
	if(real_setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0)
		real_setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
	if(!real_setsockopt)
		real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
	if(level == SOL_SOCKET && (name == SO_RCVBUF || name == SO_RCVBUFFORCE) && len >= sizeof(int)
	   && *(const int *)value < WANTED && is_udp(fd)) {
		grow(fd);
		return 0;
	}
	return real_setsockopt(fd, level, name, value, len);
}

int socket(int domain, int type, int protocol) {
	static int (*real_socket)(int, int, int);
	if(!real_socket)
		real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	if(!real_setsockopt)
		real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
	int fd = real_socket(domain, type, protocol);
	if(fd >= 0 && (domain == AF_INET || domain == AF_INET6) && (type & 0xff) == SOCK_DGRAM)
		grow(fd);
	return fd;
}
