/* The smallest child a spawn benchmark can start: a static ELF without libc whose _start calls
 * exit(0) through a raw syscall. No loader, no libc start-up: what it costs to run is the spawn
 * and the reap (perf-spawn.md's "tiny"). Built with -nostdlib -static (tools/bench/meson.build). */
void _start(void) __attribute__((noreturn));

void _start(void) {
#if defined(__x86_64__)
  __asm__ volatile("mov $60, %%eax\n\txor %%edi, %%edi\n\tsyscall" ::: "memory");
#elif defined(__aarch64__)
  __asm__ volatile("mov x8, #93\n\tmov x0, #0\n\tsvc #0" ::: "memory");
#else
#error "tiny_true: only x86_64 and aarch64"
#endif
  __builtin_unreachable();
}
