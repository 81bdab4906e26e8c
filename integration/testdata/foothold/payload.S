.text
.globl payload_start
.globl payload_end
payload_start:
  # rdi=so_start rsi=so_len edx=ip(be) ecx=port(be)
  mov %rdx,%r12
  mov %rcx,%r13
  test %rsi,%rsi
  jz 1f
  mov $11,%eax        # munmap(so_start, so_len): the file mapping is gone
  syscall
1:
  mov $41,%eax; mov $2,%edi; mov $1,%esi; xor %edx,%edx; syscall
  mov %rax,%r14
  sub $16,%rsp
  movw $2,(%rsp); movw %r13w,2(%rsp); movl %r12d,4(%rsp); movq $0,8(%rsp)
  mov $42,%eax; mov %r14,%rdi; mov %rsp,%rsi; mov $16,%edx; syscall
  lea req(%rip),%rsi; mov $(reqend-req),%edx; mov %r14,%rdi; mov $1,%eax; syscall
  sub $512,%rsp
  mov %r14,%rdi; mov %rsp,%rsi; mov $500,%edx; xor %eax,%eax; syscall
  test %rax,%rax
  jle 2f
  mov %rax,%rdx; mov $1,%edi; mov %rsp,%rsi; mov $1,%eax; syscall
2:
  mov $231,%eax; xor %edi,%edi; syscall
req: .ascii "GET / HTTP/1.1\r\nHost: allowed.test\r\nX-Evil: anon-code-in-curl\r\nConnection: close\r\n\r\n"
reqend:
payload_end:
.section .note.GNU-stack,"",@progbits
