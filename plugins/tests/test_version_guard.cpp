// A plugin built against TensorRT 10 headers, loaded into a process whose TensorRT is 11 (a stub runtime loaded
// first): it must load, refuse to register (status -1) and never call into the other major's registry.
//   test_version_guard <stub runtime (soname of the real one)> <libsegformer_plugins.so>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: test_version_guard STUB_RUNTIME PLUGIN_LIBRARY\n");
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "cannot load the stub runtime: %s\n", dlerror());
    return 1;
  }
  void* lib = dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    std::fprintf(stderr, "cannot load the plugin: %s\n", dlerror());
    return 1;
  }
  auto status = reinterpret_cast<int32_t (*)()>(dlsym(lib, "segformer_plugin_registration_status"));
  const int32_t s = status ? status() : 0;
  std::printf("registration status with TensorRT 11 in the process: %d (expected -1: refused)\n", s);
  return s == -1 ? 0 : 1;
}
