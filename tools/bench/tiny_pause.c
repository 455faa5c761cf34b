/* An idle child for the reaping benchmarks: a static ELF without libc that waits for a signal
 * forever (pause(2) through a raw syscall, again after any signal it survives) until the
 * benchmark kills it. Built with -nostdlib -static (tools/bench/meson.build). */
void _start(void) __attribute__((noreturn));

void _start(void) {
  for (;;) {
#if defined(__x86_64__)
    /* pause() */
    __asm__ volatile("mov $34, %%eax\n\tsyscall" ::: "rax", "rcx", "r11", "memory");
#elif defined(__aarch64__)
    /* ppoll(NULL, 0, NULL, NULL, 0): no pause() here; waits until a signal */
    /* clang-format off */
    __asm__ volatile(
        "mov x8, #73\n\tmov x0, #0\n\tmov x1, #0\n\tmov x2, #0\n\tmov x3, #0\n\tmov x4, #0\n\t"
        "svc #0" ::: "x0", "x1", "x2", "x3", "x4", "x8", "memory");
    /* clang-format on */
#else
#error "tiny_pause: only x86_64 and aarch64"
#endif
  }
}
