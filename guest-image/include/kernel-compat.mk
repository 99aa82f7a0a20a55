# Kbuild fragment shared by perfvisor's guest modules: what the kernel they are
# built against provides, read from its Module.symvers (in every build tree and
# headers package) and headers, as -D flags (docs/pvpmu-driver.md, "Stock
# kernels"). Included from each module's Kbuild after include/ is copied in.
pvpmu_exported = $(shell grep -s -P '\t$(1)\t' $(objtree)/Module.symvers)

# perf_output_begin/copy/end: only with guest-image/patches/0001-*.
ifneq ($(call pvpmu_exported,perf_output_begin),)
ccflags-y += -DPVPMU_HAVE_PERF_OUTPUT
endif
# kvm_clock, the clocksource: exported in 6.1, not in 6.12.
ifneq ($(call pvpmu_exported,kvm_clock),)
ccflags-y += -DPVPMU_KVM_CLOCK
endif
# The per-CPU current task pointer lives in pcpu_hot from 6.2.
ifneq ($(call pvpmu_exported,pcpu_hot),)
ccflags-y += -DPVPMU_PCPU_HOT
endif
# Since 6.3 perf_sample_data counts the sizes a driver fills (dyn_size).
ifneq ($(shell grep -s -w dyn_size $(srctree)/include/linux/perf_event.h),)
ccflags-y += -DPVPMU_DYN_SIZE
endif
