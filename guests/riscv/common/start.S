/*
 * cosim riscv64 bare-metal start code (QEMU virt, -bios none, M-mode).
 *
 * All harts arrive here together with a0 = hartid, a1 = FDT address.
 *  - every hart: mtvec, FPU on (mstatus.FS = Initial), gp, tp = hartid,
 *    sp = top of its own 16 KiB stack (from hartid);
 *  - hart 0 zeroes .bss, calls rt_init(fdt) (FDT walk: hart count, RAM size,
 *    heap start) and then releases the others through boot_flag, which lives
 *    in .data so that the .bss clear cannot race with the waiters;
 *  - everybody calls main(hartid, nharts);
 *  - when main returns, hart 0 exits via the test device (status = return
 *    value), the other harts park in a wfi loop.
 */
#include "rt.h"

    .section .text.start, "ax"
    .globl _start
_start:
    csrw    mie, zero
    csrci   mstatus, 8              /* mstatus.MIE = 0: interrupts never trap */
    la      t0, rt_trap_entry
    csrw    mtvec, t0
    li      t0, 0x2000              /* mstatus.FS = 01 (Initial) */
    csrs    mstatus, t0
    csrw    fcsr, zero
    .option push
    .option norelax
    la      gp, __global_pointer$
    .option pop
    mv      tp, a0
    li      t0, RT_MAX_HARTS
    bgeu    a0, t0, rt_park
    addi    t0, a0, 1
    slli    t0, t0, RT_STACK_SHIFT
    la      sp, __stacks_start
    add     sp, sp, t0
    mv      s0, a0
    mv      s1, a1
    bnez    a0, .Lwait

    /* hart 0: clear .bss (small: globals only, big arrays come from rt_alloc) */
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
2:  mv      a0, s1
    call    rt_init
    fence   rw, rw
    la      t0, rt_boot_flag
    li      t1, 1
    sw      t1, 0(t0)
    j       .Lgo

.Lwait:
    la      t0, rt_boot_flag
3:  lw      t1, 0(t0)
    beqz    t1, 3b
    fence   r, rw

.Lgo:
    mv      a0, s0
    la      t0, rt_nharts
    lw      a1, 0(t0)
    bgeu    a0, a1, rt_park         /* hartid beyond what the FDT announced */
    call    main
    bnez    s0, rt_park
    call    rt_exit_code            /* hart 0: exit status = main's return */

    .globl rt_park
rt_park:
    csrw    mie, zero               /* nothing can wake us: stay halted */
    wfi
    j       rt_park

    .balign 4
rt_trap_entry:
    csrr    a0, mcause
    csrr    a1, mepc
    csrr    a2, mtval
    call    rt_trap
    j       rt_park

    .data
    .balign 4
    .globl rt_boot_flag
rt_boot_flag:
    .word   0
