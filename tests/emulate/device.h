// device.h: CUDA's built-in names for host C++, so that the kernel files compile unchanged
// on the CPU (tests/emulate). A CUDA thread is a fiber (or, for kernels that never
// synchronise, one call of a loop); one block runs at a time, so `__shared__` arrays are
// function-local statics shared by the block's threads, poisoned as each block starts
// (HRNET_SHARED_FRESH below).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <source_location>
#include <utility>

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
// Plain globals, not thread-locals: one kernel runs at a time in the process (the emulated
// driver serialises them), and its threads are fibers of one host thread.
inline Dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

// Stops the process with a message: what a GPU would report as a launch failure.
[[noreturn]] inline void emulation_abort(const char* what) {
    std::fprintf(stderr, "CUDA emulation: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

// ---- a block's threads as fibers on the calling host thread ----
// Each CUDA thread of a block is a fiber with its own stack; a barrier is a switch to the
// next thread of the block that has not finished, round robin in an order drawn afresh for
// each block (a GPU schedules its warps in no order it promises, and since Volta not even a
// warp's lanes in lockstep), so that shared memory written and read by two threads with no
// barrier between gives a result that changes with the order; the host thread's own stack
// (the scheduler's) is left once per block, for the first thread in that order, and resumed
// when the last thread finishes. x86-64 only: the switch saves the callee-saved registers
// and the stack pointer (System V ABI).
#if !defined(__x86_64__)
#error "tests/emulate runs CUDA threads as x86-64 fibers"
#endif
extern "C" void hrnet_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .type hrnet_emu_switch, @function
hrnet_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size hrnet_emu_switch, .-hrnet_emu_switch
)");

// Under AddressSanitizer (the emulated driver's memcheck build) every switch is announced,
// so that it knows which stack is live, and a finished fiber leaves its stack unpoisoned
// for the next block's fiber: each frame below the final switch was unpoisoned as it
// returned, and the frames that never return (fiber_main's and those of the final switch)
// are unpoisoned just before it, a few hundred bytes, where unpoisoning the whole 256 KiB
// stack per thread per block took 8% of a run.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
inline void switch_stack(void** save_sp, void* load_sp, const void* bottom, size_t size, bool leaving_for_good) {
    void* fake = nullptr;
    if (leaving_for_good) __asan_handle_no_return();
    __sanitizer_start_switch_fiber(leaving_for_good ? nullptr : &fake, bottom, size);
    hrnet_emu_switch(save_sp, load_sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}
#else
inline void switch_stack(void** save_sp, void* load_sp, const void*, size_t, bool) { hrnet_emu_switch(save_sp, load_sp); }
#endif

// Threads that meet: `count` arrivals complete a phase, all at one place in the source.
struct FiberBarrier {
    unsigned arrived = 0;
    unsigned long long phase = 0;
    std::source_location site;  // where the phase's first arrival waits
};

// The threads of a phase must all wait at the same barrier or warp-wide instruction: on
// the GPU, one in code that the block (or warp) does not take together is undefined, and
// what compute-sanitizer's synccheck reports; counting arrivals alone would pair up
// threads waiting at different places. The first arrival names the place; the others must
// be there too.
inline void arrive_at(FiberBarrier& b, const std::source_location& at, const char* what) {
    if (b.arrived == 0) {
        b.site = at;
        return;
    }
    // One place gives one source_location (a pointer to its static record): compare that
    // first, then what it says.
    if (std::memcmp(&b.site, &at, sizeof at) == 0) return;
    if (b.site.line() == at.line() && b.site.column() == at.column() &&
        std::strcmp(b.site.file_name(), at.file_name()) == 0)
        return;
    char message[1024];
    std::snprintf(message, sizeof message, "%s in divergent code: threads wait at %s:%u:%u and at %s:%u:%u at once",
                  what, b.site.file_name(), (unsigned)b.site.line(), (unsigned)b.site.column(), at.file_name(),
                  (unsigned)at.line(), (unsigned)at.column());
    emulation_abort(message);
}

struct BlockRun {
    struct Fiber {
        void* sp = nullptr;
        char* stack = nullptr;
        Dim3 idx;
        bool done = false;
    };
    static constexpr size_t STACK = 256 << 10;
    Fiber fibers[1024];
    unsigned order[1024];  // the threads' turns: fibers[order[0]] first, and so on
    void* scheduler_sp = nullptr;
    const void* scheduler_bottom = nullptr;  // the host thread's stack, for the sanitizer
    size_t scheduler_size = 0;
    unsigned n = 0, at = 0, current = 0, alive = 0;  // fibers[current], at order[at]
    unsigned long long progress = 0;  // arrivals, completed phases and finished threads
    unsigned long long round = 0;     // the progress when the current round began
    FiberBarrier block;
    const void* body = nullptr;  // the kernel call: a std::function<void()>
    void (*call)(const void*) = nullptr;
};
inline BlockRun* running_block = nullptr;
inline unsigned long long block_serial = 0;  // counts run_block's blocks

// Shared memory as a block finds it: on a GPU it holds whatever its last user left there
// (compute-sanitizer's initcheck covers global memory only); here a `__shared__` array is a
// static, which would hold zeros or the previous block's values. The tests compile a copy
// of kernels/ that follows each `__shared__` declaration with HRNET_SHARED_FRESH(name) on
// its line (tests/common: emulated_kernels): the first of a block's threads to reach the
// declaration fills the array with 0xff bytes, NaN as f32 and f16 and all ones as an
// integer, so a read of an element no thread of the block wrote shows in the output.
struct SharedFresh {
    void* at;
    size_t bytes;
    unsigned long long block;
    void fresh();
};
inline unsigned shared_arrays_poisoned = 0;  // the declarations reached so far
inline void SharedFresh::fresh() {
    if (!running_block) emulation_abort("__shared__ memory in a kernel registered as barrier-free");
    if (block == block_serial) return;
    if (block == ~0ull) ++shared_arrays_poisoned;
    std::memset(at, 0xff, bytes);
    block = block_serial;
}
#define HRNET_SHARED_FRESH(name)                                               \
    static SharedFresh hrnet_shared_fresh_##name{&name, sizeof name, ~0ull}; \
    hrnet_shared_fresh_##name.fresh()

// One xorshift64 step: the emulator's random choices (the thread orders below and warp.h's
// cp.async landings).
static inline std::uint64_t xorshift64(std::uint64_t& state) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

// The source of the block's thread orders (xorshift64); the emulated driver seeds it from
// HRNET_EMULATION_SEED, so that an order that fails can be replayed.
inline std::uint64_t thread_order_rng = 0x2545f4914f6cdd1dull;
static inline void thread_order_seed(std::uint64_t seed) { thread_order_rng = seed | 1; }
static inline unsigned thread_order_draw(unsigned below) {
    return (unsigned)((xorshift64(thread_order_rng) >> 32) * below >> 32);
}

// Leaves the current fiber (saving its stack pointer in `save`) for the next one in the
// block's order that has not finished, round robin, or for the scheduler when none is
// left. A round ends where the order wraps; a round in which no thread arrived anywhere,
// completed a barrier or finished is a deadlock. Returns at once when the current fiber is
// the only one left.
inline void switch_to_next(void** save, bool leaving_for_good) {
    BlockRun& r = *running_block;
    const unsigned from = r.at;
    unsigned next = from;
    do next = next + 1 == r.n ? 0 : next + 1;
    while (r.fibers[r.order[next]].done && next != from);
    BlockRun::Fiber& f = r.fibers[r.order[next]];
    if (f.done) {
        switch_stack(save, r.scheduler_sp, r.scheduler_bottom, r.scheduler_size, leaving_for_good);
        return;
    }
    if (next <= from) {
        if (r.progress == r.round) emulation_abort("deadlock: threads wait at barriers that never complete");
        r.round = r.progress;
    }
    if (next == from) return;
    r.at = next;
    r.current = r.order[next];
    threadIdx = f.idx;
    switch_stack(save, f.sp, f.stack, BlockRun::STACK, leaving_for_good);
}

inline void fiber_yield() { switch_to_next(&running_block->fibers[running_block->current].sp, false); }

inline void barrier_wait(FiberBarrier& b, unsigned count, const std::source_location& at) {
    BlockRun& r = *running_block;
    ++r.progress;
    arrive_at(b, at, "__syncthreads");
    const unsigned long long phase = b.phase;
    if (++b.arrived == count) {
        b.arrived = 0;
        ++b.phase;
        return;
    }
    while (b.phase == phase) fiber_yield();
}

// Called as each fiber's thread returns from the kernel (warp.h drops its copies in flight).
inline void (*thread_exit_hook)() = nullptr;

[[noreturn]] inline void fiber_main() {
    BlockRun& r = *running_block;
#if defined(__SANITIZE_ADDRESS__)
    // The first thread in the order is entered from the scheduler, every other thread from
    // another fiber.
    const void* from_bottom = nullptr;
    size_t from_size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &from_bottom, &from_size);
    if (r.at == 0) {
        r.scheduler_bottom = from_bottom;
        r.scheduler_size = from_size;
    }
#endif
    r.call(r.body);
    if (thread_exit_hook) thread_exit_hook();
    r.fibers[r.current].done = true;
    --r.alive;
    ++r.progress;
    // Exited threads no longer count at __syncthreads, as on the GPU.
    if (r.block.arrived && r.block.arrived == r.alive) {
        r.block.arrived = 0;
        ++r.block.phase;
    }
    void* dead;
    switch_to_next(&dead, true);
    emulation_abort("a finished fiber was resumed");
}

// Runs `call(body)` as every thread of one block (blockIdx, blockDim, gridDim already set).
inline void run_block(Dim3 block, void (*call)(const void*), const void* body) {
    static BlockRun* r = new BlockRun;
    r->n = block.x * block.y * block.z;
    if (r->n == 0 || r->n > 1024) emulation_abort("a block of 0 or more than 1024 threads");
    for (unsigned t = 0; t < r->n; ++t) {
        BlockRun::Fiber& f = r->fibers[t];
        if (!f.stack) f.stack = static_cast<char*>(std::aligned_alloc(16, BlockRun::STACK));
        // The first switch pops six registers and returns into fiber_main, with the stack
        // aligned as after a call.
        void** top = reinterpret_cast<void**>(f.stack + BlockRun::STACK);
        top[-1] = nullptr;
        top[-2] = reinterpret_cast<void*>(&fiber_main);
        for (int i = 3; i <= 8; ++i) top[-i] = nullptr;
        f.sp = top - 8;
        f.idx = Dim3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
        f.done = false;
        // Fisher-Yates: thread t takes a turn among the first t + 1.
        r->order[t] = t;
        std::swap(r->order[t], r->order[thread_order_draw(t + 1)]);
    }
    ++block_serial;
    r->alive = r->n;
    r->block = FiberBarrier{};
    r->call = call;
    r->body = body;
    r->round = r->progress;
    r->at = 0;
    r->current = r->order[0];
    BlockRun::Fiber& first = r->fibers[r->current];
    threadIdx = first.idx;
    BlockRun* outer = running_block;
    running_block = r;
    switch_stack(&r->scheduler_sp, first.sp, first.stack, BlockRun::STACK, false);
    if (r->alive) emulation_abort("the scheduler resumed before every thread finished");
    running_block = outer;
}

inline void __syncthreads(const std::source_location at = std::source_location::current()) {
    if (!running_block) emulation_abort("__syncthreads in a kernel registered as barrier-free");
    barrier_wait(running_block->block, running_block->alive, at);
}

// Memory ordering between blocks: one block runs at a time, so every store is visible to
// the blocks after it; the fence and the cache hint need do nothing more.
inline void __threadfence() {}
template <typename T> inline T __ldcg(const T* p) { return *p; }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}

inline float __uint_as_float(unsigned i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
