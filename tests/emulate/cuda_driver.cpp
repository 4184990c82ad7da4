// cuda_driver.cpp: a CPU stand-in for the CUDA driver (libcuda.so), so that the whole GPU
// engine (src/cuda: arena, streams and events, CUDA graph capture and replay, the
// tensor-core program, peaks, flip merge, out-of-memory handling) runs on a machine
// without a GPU and is checked against the CPU reference (tests/engine_emulated.rs).
//
// What is real: the Rust code and cudarc, NVRTC compiling kernels/*.cu to sm_90 machine
// code, and the kernels' source, which is compiled here as host C++ (device.h, warp.h) and
// run in place of that machine code. What is emulated, and how it is made strict:
// - Streams and events are a dependency graph. Work runs only at synchronisation points
//   and then in a random order that respects the dependencies (HRNET_EMULATION_SEED), so a
//   missing event wait shows up as a wrong or changing result, as a race would on a GPU.
// - Graph capture records the same nodes; a stream joins a capture by waiting on one of
//   its events; ending a capture with a joined stream not joined back fails, as do calls
//   that are not allowed while the calling thread captures (synchronising, allocating).
// - Memory: allocations are host memory, 256-byte aligned, counted against a limit
//   (HRNET_EMULATED_MEMORY, bytes); stream-ordered frees go back to a pool that is
//   released at the next synchronisation. Every pointer a kernel receives must lie in a
//   live allocation when the kernel runs, and copies must stay inside one.
// - Launches: the block may not exceed the kernel's __launch_bounds__, nor the grid CUDA's
//   limits; a module serves only the kernels its image names.
// - Memcheck: built with -fsanitize=address (and libasan preloaded), every kernel access
//   outside an allocation, or into one already freed, stops the process with a report.
// - cp.async: each copy lands at once or only when its group is waited for, at random
//   (warp.h), so a pipeline that reads a stage early or refills one too soon gives wrong
//   results.
// - A block's threads take their turns between barriers in an order drawn afresh for each
//   block (device.h), so shared memory written by one thread and read by another with no
//   barrier between gives a result that changes with the seed.
// - Shared memory: each block finds its `__shared__` arrays filled with 0xff bytes (NaN),
//   as a GPU leaves whatever its last user wrote (device.h), so a read of an element no
//   thread wrote shows, even multiplied by zero.
// - Barriers: the threads of a phase must wait at one `__syncthreads` (the lanes of a warp
//   at one ldmatrix or mma.sync); any other stops the run with both places (device.h).
// Not emulated: timing (events give host times).
//
// Build: c++ -std=c++20 -O2 -march=native [-fsanitize=address] -pthread -shared -fPIC
//        -fvisibility=hidden -I KERNELS -I tests/emulate tests/emulate/cuda_driver.cpp
//        -o DIR/libcuda.so
// KERNELS is tests/common's copy of kernels/ with each `__shared__` declaration marked
// (emulated_kernels; tests/engine_emulated.rs writes it to DIR/kernels); kernels/ itself
// builds too, its shared memory then not poisoned. Put DIR first on LD_LIBRARY_PATH (with
// ASan: LD_PRELOAD=$(c++ -print-file-name=libasan.so)).

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_fp16.h"
#include "device.h"
#include "warp.h"

#define HRNET_WARP_EMULATION
#include "common.cuh"
#include "argmax.cu"
#include "bn_relu.cu"
#include "conv.cu"
#include "conv_tc.cu"
#include "exchange.cu"
#include "fill.cu"
#include "flip_merge.cu"
#include "input.cu"
#include "unfused.cu"

namespace {

// ---- the driver's types and codes (values as in cuda.h) ----
typedef int CUresult;
enum : CUresult {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    ILLEGAL_STATE = 401,
    NOT_FOUND = 500,
    LAUNCH_OUT_OF_RESOURCES = 701,
    NOT_SUPPORTED = 801,
    CAPTURE_UNSUPPORTED = 900,
    CAPTURE_INVALIDATED = 901,
    CAPTURE_UNJOINED = 904,
    CAPTURE_ISOLATION = 905,
    UNKNOWN = 999,
};
typedef unsigned long long CUdeviceptr;

const char* error_name(CUresult r) {
    switch (r) {
        case SUCCESS: return "CUDA_SUCCESS";
        case INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
        case INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE";
        case NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
        case NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        case CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
        case CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
        case CAPTURE_UNJOINED: return "CUDA_ERROR_STREAM_CAPTURE_UNJOINED";
        case CAPTURE_ISOLATION: return "CUDA_ERROR_STREAM_CAPTURE_ISOLATION";
        default: return "CUDA_ERROR_UNKNOWN";
    }
}

// ---- the kernels, by name ----
struct Kernel {
    const char* name;
    unsigned max_threads;  // its __launch_bounds__
    bool threaded;         // uses __syncthreads or warp instructions: its threads run as fibers
    // Copies the launch's arguments (as the driver does) into a call of the kernel, and a
    // check that every pointer among them lies in a live allocation.
    std::pair<std::function<void()>, std::function<void()>> (*bind)(void** params);
};

void check_pointer(const void* p, const char* kernel);

template <typename T> void check_arg(const T& v, const char* kernel) {
    if constexpr (std::is_pointer_v<T>) {
        if (v) check_pointer((const void*)v, kernel);
    }
}
template <typename E> void check_arg(const TcArgs<E>& a, const char* kernel) {
    for (int s = 0; s < a.nsrc && s < TC_MAX_SRC; ++s) check_arg(a.src[s], kernel);
    for (auto t : a.term) check_arg(t, kernel);
    check_arg(a.w, kernel);
    check_arg(a.bias, kernel);
    check_arg(a.y, kernel);
    check_arg(a.part, kernel);
    check_arg(a.count, kernel);
}

template <typename E> void check_arg(const TcGroup<E>& g, const char* kernel) {
    for (int j = 0; j < g.members && j < TC_GROUP; ++j) check_arg(g.g[j], kernel);
}

template <typename... A, size_t... I>
std::pair<std::function<void()>, std::function<void()>> bind_args(const char* name, void (*f)(A...), void** p,
                                                                  std::index_sequence<I...>) {
    std::tuple<std::decay_t<A>...> args{*static_cast<std::decay_t<A>*>(p[I])...};
    return {[=] { std::apply(f, args); },
            [=] { std::apply([&](const auto&... a) { (check_arg(a, name), ...); }, args); }};
}

template <typename... A>
std::pair<std::function<void()>, std::function<void()>> bind_kernel(const char* name, void (*f)(A...), void** p) {
    return bind_args(name, f, p, std::index_sequence_for<A...>{});
}

#define KERNEL(name, threads, threaded) \
    Kernel { #name, threads, threaded, [](void** p) { return bind_kernel(#name, name, p); } }
#define KERNEL_F32_F16(name, threads, threaded) \
    KERNEL(name##_f32, threads, threaded), KERNEL(name##_f16, threads, threaded)
#define KERNEL_TC(KS, S)                                              \
    KERNEL(conv_tc_k##KS##s##S##_128x64_f16, TC_THREADS, true),       \
        KERNEL(conv_tc_k##KS##s##S##_64x64_f16, TC_THREADS, true),    \
        KERNEL(conv_tc_k##KS##s##S##_128x32_f16, TC_THREADS, true),   \
        KERNEL(conv_tc_k##KS##s##S##_64x32_f16, TC_THREADS, true),    \
        KERNEL(conv_tc_k##KS##s##S##_32x32_f16, TC_THREADS, true),    \
        KERNEL(conv_tc_k##KS##s##S##_32x32_deep_f16, TC_THREADS, true), \
        KERNEL(conv_tc_k##KS##s##S##_64x32_f32, TC_THREADS, true),    \
        KERNEL(conv_tc_k##KS##s##S##_32x32_f32, TC_THREADS, true),    \
        KERNEL(conv_tc_k##KS##s##S##_32x32_deep_f32, TC_THREADS, true), \
        KERNEL(conv_tc_k##KS##s##S##_32x32_group_f16, TC_THREADS, true), \
        KERNEL(conv_tc_k##KS##s##S##_32x32_deep_group_f16, TC_THREADS, true), \
        KERNEL(conv_tc_k##KS##s##S##_32x32_group_f32, TC_THREADS, true), \
        KERNEL(conv_tc_k##KS##s##S##_32x32_deep_group_f32, TC_THREADS, true)

const Kernel KERNELS[] = {
    KERNEL_F32_F16(argmax, ARGMAX_THREADS, true),
    KERNEL_F32_F16(bn_relu, BN_THREADS, false),
    KERNEL_F32_F16(conv_k3s1, CONV_THREADS, true),
    KERNEL_F32_F16(conv_k3s2, CONV_THREADS, true),
    KERNEL_F32_F16(conv_k1s1, CONV_THREADS, true),
    KERNEL_TC(3, 1),
    KERNEL_TC(3, 2),
    KERNEL_TC(1, 1),
    KERNEL_F32_F16(exchange, EXCHANGE_THREADS, false),
    KERNEL_F32_F16(exchange_nhwc, EXCHANGE_THREADS, false),
    KERNEL_F32_F16(fill_nan, FILL_THREADS, false),
    KERNEL_F32_F16(flip_merge, FLIP_THREADS, false),
    KERNEL_F32_F16(input_layout, INPUT_THREADS, false),
    KERNEL_F32_F16(input_pad, INPUT_THREADS, false),
    KERNEL_F32_F16(upsample_nhwc, UNFUSED_THREADS, false),
    KERNEL_F32_F16(add, UNFUSED_THREADS, false),
    KERNEL_F32_F16(relu, UNFUSED_THREADS, false),
};

std::mt19937_64 rng;

// Runs a grid, the blocks one after another in a random order (a GPU promises none; a
// kernel whose blocks cooperate, as split K does, must not depend on it): barrier-free
// kernels as a loop over the threads, the others with each thread a fiber (device.h).
// A grid launched with programmatic stream serialization may start before the previous
// kernel ends, so each of its blocks must execute griddepcontrol.wait.
void run_grid(const Kernel& k, Dim3 grid, Dim3 block, const std::function<void()>& call, bool programmatic) {
    const unsigned threads = block.x * block.y * block.z;
    auto invoke = [](const void* f) { (*static_cast<const std::function<void()>*>(f))(); };
    blockDim = block;
    gridDim = grid;
    std::vector<Dim3> order;
    order.reserve((size_t)grid.x * grid.y * grid.z);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) order.push_back(Dim3{bx, by, bz});
    std::shuffle(order.begin(), order.end(), rng);
    for (const Dim3& b : order) {
        blockIdx = b;
        grid_dependency_waited = false;
        if (k.threaded) {
            run_block(block, invoke, &call);
        } else {
            for (unsigned t = 0; t < threads; ++t) {
                threadIdx = Dim3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                call();
            }
        }
        if (programmatic && !grid_dependency_waited) {
            const std::string what = std::string(k.name) +
                                     ": launched with programmatic stream serialization, but a block never "
                                     "executed griddepcontrol.wait";
            emulation_abort(what.c_str());
        }
    }
}

// ---- the state: one device, one context, everything behind one lock ----
struct Node {
    std::function<void()> run;
    std::vector<std::shared_ptr<Node>> deps;
    bool done = false;
    double when = 0;  // host seconds at which it ran (for event timing)
};
using NodeP = std::shared_ptr<Node>;

struct Capture;
struct Stream {
    NodeP tail;
    Capture* capture = nullptr;
    NodeP outside_tail;  // the tail from before the stream joined a capture
};
struct Capture {
    Stream* origin;
    std::thread::id thread;
    std::vector<NodeP> nodes;
    std::set<Stream*> joined;
    CUresult invalid = SUCCESS;
};
struct Event {
    NodeP node;
    Capture* capture = nullptr;
    bool timing = true;
};
struct Graph {
    std::vector<NodeP> nodes;  // their deps stay inside the graph
};
struct Module {
    std::string image;
};
struct Allocation {
    size_t bytes;
    bool freeing = false;  // a stream-ordered free is queued
};

std::recursive_mutex api;
bool initialised = false;
size_t limit = size_t(1) << 30, used = 0, pooled = 0;
std::map<std::uintptr_t, Allocation> allocations;
std::vector<NodeP> pending;
std::set<Stream*> streams;
std::set<Event*> events;
std::set<Graph*> graphs;
std::set<Module*> modules;
Stream legacy;  // the NULL stream
int context_token;
thread_local void* current_context = nullptr;

double now() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

void check_pointer(const void* p, const char* kernel) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    auto it = allocations.upper_bound(a);
    if (it != allocations.begin()) {
        --it;
        if (a < it->first + it->second.bytes) return;
    }
    std::string what = std::string(kernel) + ": an argument points outside every live allocation";
    emulation_abort(what.c_str());
}

// Whether [p, p + bytes) lies inside one live allocation.
bool inside(CUdeviceptr p, size_t bytes) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second.bytes;
}

// Runs every queued node, choosing at random among those whose dependencies have run.
void drain() {
    while (!pending.empty()) {
        std::vector<size_t> ready;
        for (size_t i = 0; i < pending.size(); ++i) {
            const auto& d = pending[i]->deps;
            if (std::all_of(d.begin(), d.end(), [](const NodeP& n) { return n->done; })) ready.push_back(i);
        }
        if (ready.empty()) emulation_abort("queued work waits on work that never runs");
        const size_t pick = ready[std::uniform_int_distribution<size_t>(0, ready.size() - 1)(rng)];
        NodeP n = pending[pick];
        pending[pick] = pending.back();
        pending.pop_back();
        n->when = now();
        n->run();
        n->done = true;
        n->deps.clear();
    }
}

// A synchronisation point: all queued work runs, and the pool gives its memory back.
void synchronise() {
    drain();
    pooled = 0;
}

Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &legacy; }

// The capture the calling thread is running, if any.
Capture* capture_of_this_thread() {
    for (Stream* s : streams)
        if (s->capture && s->capture->origin == s && s->capture->thread == std::this_thread::get_id())
            return s->capture;
    return nullptr;
}

// A call that is not allowed while this thread captures: invalidates the capture.
bool refused_in_capture() {
    if (Capture* c = capture_of_this_thread()) {
        c->invalid = CAPTURE_INVALIDATED;
        return true;
    }
    return false;
}

NodeP enqueue(Stream* s, std::function<void()> run, NodeP extra = nullptr) {
    auto n = std::make_shared<Node>();
    n->run = std::move(run);
    if (s->tail) n->deps.push_back(s->tail);
    if (extra) n->deps.push_back(extra);
    s->tail = n;
    if (s->capture)
        s->capture->nodes.push_back(n);
    else
        pending.push_back(n);
    return n;
}

// Whether `target` is `from` or one of its ancestors.
bool reaches(const NodeP& from, const NodeP& target) {
    if (!target) return true;
    std::vector<Node*> stack{from.get()};
    std::set<Node*> seen;
    while (!stack.empty()) {
        Node* n = stack.back();
        stack.pop_back();
        if (!n || !seen.insert(n).second) continue;
        if (n == target.get()) return true;
        for (auto& d : n->deps) stack.push_back(d.get());
    }
    return false;
}

void end_capture_of(Capture* c) {
    for (Stream* s : streams)
        if (s->capture == c) {
            s->tail = s->outside_tail;
            s->outside_tail = nullptr;
            s->capture = nullptr;
        }
    delete c;
}

CUresult alloc(CUdeviceptr* p, size_t bytes, bool from_pool) {
    if (!p) return INVALID_VALUE;
    if (refused_in_capture()) return CAPTURE_UNSUPPORTED;
    const size_t free = limit - used - (from_pool ? 0 : pooled);
    if (bytes > free) return OUT_OF_MEMORY;
    // Exactly the bytes asked for (the memcheck build then reports any access past them),
    // 256-byte aligned as cuMemAlloc's.
    void* m = nullptr;
    if (posix_memalign(&m, 256, std::max<size_t>(bytes, 1)) != 0) return OUT_OF_MEMORY;
    std::memset(m, 0xff, bytes);  // uninitialised memory reads as NaN
    allocations[reinterpret_cast<std::uintptr_t>(m)] = Allocation{bytes};
    used += bytes;
    *p = reinterpret_cast<CUdeviceptr>(m);
    return SUCCESS;
}

CUresult release(CUdeviceptr p, bool to_pool) {
    auto it = allocations.find(p);
    if (it == allocations.end()) return INVALID_VALUE;
    used -= it->second.bytes;
    if (to_pool) pooled += it->second.bytes;
    std::free(reinterpret_cast<void*>(p));
    allocations.erase(it);
    return SUCCESS;
}

void init_once() {
    if (initialised) return;
    initialised = true;
    const char* seed = std::getenv("HRNET_EMULATION_SEED");
    rng.seed(seed ? std::strtoull(seed, nullptr, 10) : std::random_device{}());
    cp_async_seed(rng());
    thread_order_seed(rng());
    if (const char* m = std::getenv("HRNET_EMULATED_MEMORY")) limit = std::strtoull(m, nullptr, 10);
    streams.insert(&legacy);
}

// Ends a live handle of `live`'s kind, or says it is not one.
template <typename T> CUresult destroy(std::set<T*>& live, void* handle) {
    auto* p = static_cast<T*>(handle);
    if (!live.erase(p)) return INVALID_HANDLE;
    delete p;
    return SUCCESS;
}

// The size of an ELF image (a cubin), from its header; 0 if it is not one.
size_t elf_size(const unsigned char* p) {
    if (std::memcmp(p, "\x7f" "ELF", 4) != 0 || p[4] != 2) return 0;  // 64-bit ELF only
    uint64_t shoff;
    uint16_t shentsize, shnum;
    std::memcpy(&shoff, p + 0x28, 8);
    std::memcpy(&shentsize, p + 0x3a, 2);
    std::memcpy(&shnum, p + 0x3c, 2);
    return shoff + (size_t)shentsize * shnum;
}

}  // namespace

#define API extern "C" __attribute__((visibility("default"))) CUresult
#define LOCK                                       \
    std::lock_guard<std::recursive_mutex> lock(api); \
    init_once()

// ---- initialisation, device, context ----
API cuInit(unsigned) {
    LOCK;
    return SUCCESS;
}
API cuDriverGetVersion(int* v) {
    if (!v) return INVALID_VALUE;
    *v = 13000;
    return SUCCESS;
}
API cuGetErrorName(CUresult r, const char** s) {
    if (!s) return INVALID_VALUE;
    *s = error_name(r);
    return SUCCESS;
}
API cuGetErrorString(CUresult r, const char** s) { return cuGetErrorName(r, s); }
API cuDeviceGetCount(int* n) {
    LOCK;
    if (!n) return INVALID_VALUE;
    *n = 1;
    return SUCCESS;
}
API cuDeviceGet(int* d, int ordinal) {
    LOCK;
    if (!d) return INVALID_VALUE;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return SUCCESS;
}
API cuDeviceGetName(char* name, int len, int dev) {
    if (dev != 0) return INVALID_DEVICE;
    if (!name || len <= 0) return INVALID_VALUE;
    std::snprintf(name, (size_t)len, "CPU emulation of a CUDA GPU (tests/emulate)");
    return SUCCESS;
}
API cuDeviceTotalMem_v2(size_t* bytes, int dev) {
    LOCK;
    if (dev != 0) return INVALID_DEVICE;
    if (!bytes) return INVALID_VALUE;
    *bytes = limit;
    return SUCCESS;
}
API cuDeviceGetAttribute(int* v, int attribute, int dev) {
    if (dev != 0) return INVALID_DEVICE;
    if (!v) return INVALID_VALUE;
    switch (attribute) {
        case 1: *v = 1024; break;  // max threads per block
        case 10: *v = 32; break;   // warp size
        case 16: *v = 132; break;  // multiprocessors, as an H100 or H200 SXM
        case 75: *v = 9; break;    // compute capability 9.0
        case 76: *v = 0; break;
        case 115: *v = 1; break;   // memory pools (stream-ordered allocation)
        default: return INVALID_VALUE;
    }
    return SUCCESS;
}
API cuDevicePrimaryCtxRetain(void** ctx, int dev) {
    LOCK;
    if (dev != 0) return INVALID_DEVICE;
    if (!ctx) return INVALID_VALUE;
    *ctx = &context_token;
    return SUCCESS;
}
API cuDevicePrimaryCtxRelease_v2(int dev) { return dev == 0 ? SUCCESS : INVALID_DEVICE; }
API cuCtxSetCurrent(void* ctx) {
    if (ctx && ctx != &context_token) return INVALID_CONTEXT;
    current_context = ctx;
    return SUCCESS;
}
API cuCtxGetCurrent(void** ctx) {
    if (!ctx) return INVALID_VALUE;
    *ctx = current_context;
    return SUCCESS;
}
API cuCtxSynchronize() {
    LOCK;
    if (refused_in_capture()) return CAPTURE_UNSUPPORTED;
    synchronise();
    return SUCCESS;
}
API cuMemGetInfo_v2(size_t* free, size_t* total) {
    LOCK;
    if (!free || !total) return INVALID_VALUE;
    *free = limit - used - pooled;
    *total = limit;
    return SUCCESS;
}

// ---- modules ----
API cuModuleLoadData(void** module, const void* image) {
    LOCK;
    if (!module || !image) return INVALID_VALUE;
    const auto* p = static_cast<const unsigned char*>(image);
    const size_t size = elf_size(p);
    if (size == 0) return INVALID_IMAGE;  // only cubins: the engine compiles to machine code
    auto* m = new Module{std::string(reinterpret_cast<const char*>(p), size)};
    modules.insert(m);
    *module = m;
    return SUCCESS;
}
API cuModuleUnload(void* module) {
    LOCK;
    return destroy(modules, module);
}
API cuModuleGetFunction(void** f, void* module, const char* name) {
    LOCK;
    auto* m = static_cast<Module*>(module);
    if (!f || !name) return INVALID_VALUE;
    if (!modules.count(m)) return INVALID_HANDLE;
    // The cubin's string table names its kernels; serve only those.
    const std::string symbol = std::string(1, '\0') + name + std::string(1, '\0');
    if (m->image.find(symbol) == std::string::npos) return NOT_FOUND;
    for (const Kernel& k : KERNELS)
        if (std::strcmp(k.name, name) == 0) {
            *f = const_cast<Kernel*>(&k);
            return SUCCESS;
        }
    std::fprintf(stderr, "CUDA emulation: kernel %s is in the cubin but not in KERNELS (cuda_driver.cpp)\n", name);
    return NOT_FOUND;
}

// ---- memory ----
API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    return alloc(p, bytes, false);
}
API cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* s) {
    LOCK;
    if (stream_of(s)->capture) return CAPTURE_UNSUPPORTED;  // allocation nodes: not emulated
    return alloc(p, bytes, true);
}
API cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    if (refused_in_capture()) return CAPTURE_UNSUPPORTED;
    synchronise();
    return release(p, false);
}
API cuMemFreeAsync(CUdeviceptr p, void* s) {
    LOCK;
    Stream* st = stream_of(s);
    if (st->capture) return CAPTURE_UNSUPPORTED;
    auto it = allocations.find(p);
    if (it == allocations.end() || it->second.freeing) return INVALID_VALUE;
    it->second.freeing = true;
    enqueue(st, [p] { release(p, true); });
    return SUCCESS;
}
API cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void* s) {
    LOCK;
    if (!inside(p, n)) return INVALID_VALUE;
    enqueue(stream_of(s), [=] {
        if (!inside(p, n)) emulation_abort("memset into memory freed before it ran");
        std::memset(reinterpret_cast<void*>(p), v, n);
    });
    return SUCCESS;
}
API cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    LOCK;
    if (refused_in_capture()) return CAPTURE_UNSUPPORTED;
    if (!inside(p, n)) return INVALID_VALUE;
    synchronise();
    std::memset(reinterpret_cast<void*>(p), v, n);
    return SUCCESS;
}
// From pageable host memory: the data is staged at the call, the copy runs in stream order.
API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    LOCK;
    Stream* st = stream_of(s);
    if (st->capture) {
        st->capture->invalid = CAPTURE_INVALIDATED;
        return CAPTURE_UNSUPPORTED;  // a copy from pageable memory cannot be captured
    }
    if (!inside(dst, n) || (!src && n)) return INVALID_VALUE;
    auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*)src, (const unsigned char*)src + n);
    enqueue(st, [=] {
        if (!inside(dst, n)) emulation_abort("copy into memory freed before it ran");
        std::memcpy(reinterpret_cast<void*>(dst), staged->data(), n);
    });
    return SUCCESS;
}
API cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCK;
    if (refused_in_capture()) return CAPTURE_UNSUPPORTED;
    if (!inside(dst, n) || (!src && n)) return INVALID_VALUE;
    synchronise();
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    return SUCCESS;
}
// Into pageable host memory: returns when the copy is done, so all queued work runs first.
API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    LOCK;
    if (stream_of(s)->capture || refused_in_capture()) return CAPTURE_UNSUPPORTED;
    if (!inside(src, n) || (!dst && n)) return INVALID_VALUE;
    drain();
    if (!inside(src, n)) return INVALID_VALUE;
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return SUCCESS;
}
API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return cuMemcpyDtoHAsync_v2(dst, src, n, nullptr); }
API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    LOCK;
    if (!inside(dst, n) || !inside(src, n)) return INVALID_VALUE;
    enqueue(stream_of(s), [=] {
        if (!inside(dst, n) || !inside(src, n)) emulation_abort("copy between freed memory");
        std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    });
    return SUCCESS;
}

// ---- streams and events ----
API cuStreamCreate(void** s, unsigned) {
    LOCK;
    if (!s) return INVALID_VALUE;
    auto* st = new Stream;
    streams.insert(st);
    *s = st;
    return SUCCESS;
}
API cuStreamCreateWithPriority(void** s, unsigned flags, int) { return cuStreamCreate(s, flags); }
API cuStreamDestroy_v2(void* s) {
    LOCK;
    auto* st = static_cast<Stream*>(s);
    if (!st || !streams.count(st)) return INVALID_HANDLE;
    if (st->capture) return ILLEGAL_STATE;
    streams.erase(st);  // its queued nodes still run: they do not refer to it
    delete st;
    return SUCCESS;
}
API cuStreamSynchronize(void* s) {
    LOCK;
    if (stream_of(s)->capture || refused_in_capture()) return CAPTURE_UNSUPPORTED;
    synchronise();
    return SUCCESS;
}
API cuEventCreate(void** e, unsigned flags) {
    LOCK;
    if (!e) return INVALID_VALUE;
    auto* ev = new Event;
    ev->timing = !(flags & 2);  // CU_EVENT_DISABLE_TIMING
    events.insert(ev);
    *e = ev;
    return SUCCESS;
}
API cuEventDestroy_v2(void* e) {
    LOCK;
    return destroy(events, e);
}
API cuEventRecord(void* e, void* s) {
    LOCK;
    auto* ev = static_cast<Event*>(e);
    if (!events.count(ev)) return INVALID_HANDLE;
    Stream* st = stream_of(s);
    ev->node = enqueue(st, [] {});
    ev->capture = st->capture;
    return SUCCESS;
}
API cuStreamWaitEvent(void* s, void* e, unsigned) {
    LOCK;
    auto* ev = static_cast<Event*>(e);
    if (!events.count(ev)) return INVALID_HANDLE;
    Stream* st = stream_of(s);
    if (!ev->node) return SUCCESS;  // never recorded: nothing to wait for
    if (ev->capture) {
        if (!st->capture) {  // the stream joins the capture
            st->capture = ev->capture;
            st->outside_tail = st->tail;
            st->tail = ev->node;
            ev->capture->joined.insert(st);
            return SUCCESS;
        }
        if (st->capture != ev->capture) return CAPTURE_ISOLATION;
    } else if (st->capture) {
        st->capture->invalid = CAPTURE_INVALIDATED;
        return CAPTURE_ISOLATION;  // a captured stream waiting on work outside the capture
    }
    enqueue(st, [] {}, ev->node);
    return SUCCESS;
}
API cuEventQuery(void* e) {
    LOCK;
    auto* ev = static_cast<Event*>(e);
    if (!events.count(ev)) return INVALID_HANDLE;
    if (ev->capture || refused_in_capture()) return CAPTURE_UNSUPPORTED;
    synchronise();
    return SUCCESS;
}
API cuEventSynchronize(void* e) { return cuEventQuery(e); }
API cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    LOCK;
    auto *a = static_cast<Event*>(start), *b = static_cast<Event*>(end);
    if (!ms || !events.count(a) || !events.count(b)) return INVALID_HANDLE;
    if (!a->timing || !b->timing || !a->node || !b->node || !a->node->done || !b->node->done) return INVALID_HANDLE;
    *ms = (float)((b->node->when - a->node->when) * 1e3);
    return SUCCESS;
}
API cuEventElapsedTime(float* ms, void* start, void* end) { return cuEventElapsedTime_v2(ms, start, end); }

// ---- launches ----
CUresult launch(void* f, Dim3 grid, Dim3 block, unsigned shared, void* s, void** params, void** extra,
                bool programmatic) {
    LOCK;
    const Kernel* k = static_cast<const Kernel*>(f);
    if (k < std::begin(KERNELS) || k >= std::end(KERNELS)) return INVALID_HANDLE;
    if (extra || (!params)) return INVALID_VALUE;
    if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z || grid.x > 0x7fffffffu ||
        grid.y > 65535 || grid.z > 65535 || block.z > 64)
        return INVALID_VALUE;
    if ((unsigned long long)block.x * block.y * block.z > k->max_threads) return LAUNCH_OUT_OF_RESOURCES;
    if (shared) return NOT_SUPPORTED;  // the kernels use static shared memory only
    auto [call, check] = k->bind(params);
    enqueue(stream_of(s), [k, grid, block, call, check, programmatic] {
        check();
        run_grid(*k, grid, block, call, programmatic);
    });
    return SUCCESS;
}
API cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* s, void** params, void** extra) {
    return launch(f, Dim3{gx, gy, gz}, Dim3{bx, by, bz}, shared, s, params, extra, false);
}

// CUlaunchAttribute and CUlaunchConfig, as in cuda.h.
struct LaunchAttribute {
    int id;
    char pad[4];
    union {
        char bytes[64];
        int programmatic_stream_serialization;
    } value;
};
static_assert(sizeof(LaunchAttribute) == 72, "CUlaunchAttribute");
struct LaunchConfig {
    unsigned gx, gy, gz, bx, by, bz, shared;
    void* stream;
    LaunchAttribute* attrs;
    unsigned num_attrs;
};
enum : int { ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6 };

// Only the attribute the engine uses. A programmatic launch runs, as every launch here,
// after the previous one has finished: the ordering PDL relaxes is not emulated, but its
// requirement on the kernel is checked (run_grid).
API cuLaunchKernelEx(const LaunchConfig* c, void* f, void** params, void** extra) {
    if (!c || (c->num_attrs && !c->attrs)) return INVALID_VALUE;
    bool programmatic = false;
    for (unsigned i = 0; i < c->num_attrs; ++i) {
        if (c->attrs[i].id != ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION) return NOT_SUPPORTED;
        programmatic = c->attrs[i].value.programmatic_stream_serialization != 0;
    }
    return launch(f, Dim3{c->gx, c->gy, c->gz}, Dim3{c->bx, c->by, c->bz}, c->shared, c->stream, params, extra,
                  programmatic);
}

// ---- graphs ----
API cuStreamBeginCapture_v2(void* s, int) {
    LOCK;
    Stream* st = stream_of(s);
    if (st == &legacy) return NOT_SUPPORTED;
    if (st->capture) return ILLEGAL_STATE;
    st->capture = new Capture{st, std::this_thread::get_id()};
    st->outside_tail = st->tail;
    st->tail = nullptr;
    return SUCCESS;
}
API cuStreamIsCapturing(void* s, int* status) {
    LOCK;
    if (!status) return INVALID_VALUE;
    Capture* c = stream_of(s)->capture;
    *status = !c ? 0 : (c->invalid ? 2 : 1);
    return SUCCESS;
}
API cuStreamEndCapture(void* s, void** graph) {
    LOCK;
    Stream* st = stream_of(s);
    if (!graph) return INVALID_VALUE;
    Capture* c = st->capture;
    if (!c || c->origin != st) return ILLEGAL_STATE;
    CUresult r = c->invalid;
    if (r == SUCCESS)
        for (Stream* j : c->joined)
            if (j->capture == c && !reaches(st->tail, j->tail)) r = CAPTURE_UNJOINED;
    if (r != SUCCESS) {
        end_capture_of(c);
        *graph = nullptr;
        return r;
    }
    auto* g = new Graph{std::move(c->nodes)};
    graphs.insert(g);
    end_capture_of(c);
    *graph = g;
    return SUCCESS;
}
API cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    LOCK;
    auto* g = static_cast<Graph*>(graph);
    if (!exec || !graphs.count(g)) return INVALID_VALUE;
    // The executable graph is a copy: later changes to the graph do not reach it.
    auto* e = new Graph;
    std::map<Node*, NodeP> copy;
    for (const NodeP& n : g->nodes) {
        auto c = std::make_shared<Node>();
        c->run = n->run;
        copy[n.get()] = c;
        e->nodes.push_back(c);
    }
    for (const NodeP& n : g->nodes)
        for (const NodeP& d : n->deps) {
            if (!copy.count(d.get())) return INVALID_VALUE;
            copy[n.get()]->deps.push_back(copy[d.get()]);
        }
    graphs.insert(e);
    *exec = e;
    return SUCCESS;
}
API cuGraphLaunch(void* exec, void* s) {
    LOCK;
    auto* e = static_cast<Graph*>(exec);
    if (!graphs.count(e)) return INVALID_HANDLE;
    Stream* st = stream_of(s);
    if (st->capture) return CAPTURE_UNSUPPORTED;  // graphs within graphs: not emulated
    std::map<Node*, NodeP> fresh;
    for (const NodeP& n : e->nodes) {
        auto c = std::make_shared<Node>();
        c->run = n->run;
        fresh[n.get()] = c;
    }
    std::set<Node*> has_child;
    for (const NodeP& n : e->nodes) {
        NodeP c = fresh[n.get()];
        for (const NodeP& d : n->deps) {
            c->deps.push_back(fresh[d.get()]);
            has_child.insert(d.get());
        }
        if (n->deps.empty() && st->tail) c->deps.push_back(st->tail);
        pending.push_back(c);
    }
    auto end = std::make_shared<Node>();
    end->run = [] {};
    for (const NodeP& n : e->nodes)
        if (!has_child.count(n.get())) end->deps.push_back(fresh[n.get()]);
    if (st->tail) end->deps.push_back(st->tail);
    pending.push_back(end);
    st->tail = end;
    return SUCCESS;
}
API cuGraphUpload(void* exec, void*) {
    LOCK;
    return graphs.count(static_cast<Graph*>(exec)) ? SUCCESS : INVALID_HANDLE;
}
API cuGraphDestroy(void* graph) {
    LOCK;
    return destroy(graphs, graph);
}
API cuGraphExecDestroy(void* exec) { return cuGraphDestroy(exec); }
